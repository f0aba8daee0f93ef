"""Admin routes: projects, API keys, costs."""
