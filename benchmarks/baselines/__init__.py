"""Reference implementations the gateway is measured against (not part of the product)."""
