"""Import ChatGPT data exports (single `conversations.json` or split `conversations-NNN.json`; zip, folder or file) into a project."""
