"""artStore's Admin Module as the gateway uses it: the file registry's wire and client."""
