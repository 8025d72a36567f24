"""The exceptions archive: page through Retrieve exceptions, write the file, summarise."""
