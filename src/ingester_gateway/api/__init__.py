"""The HTTP edge: the upload routes (raw ASGI) and the API description."""
