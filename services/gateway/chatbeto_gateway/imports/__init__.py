"""ChatGPT export imports: the upload route and how an upload is stored."""
