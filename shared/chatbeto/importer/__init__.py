"""Import ChatGPT data exports (`conversations.json` or the export `.zip`) into a project."""
