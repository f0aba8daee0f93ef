"""chatbeto: the code the services share (settings, logging, messages, topology, storage)."""
