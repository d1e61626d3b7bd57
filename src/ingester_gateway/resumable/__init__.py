"""Resumable uploads: tus 1.0 and the IETF resumable-upload draft on one endpoint."""
