"""The vendored CryoET Data Portal LinkML schema and the pydantic module generated from it."""
