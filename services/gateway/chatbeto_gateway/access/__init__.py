"""Who may call what: API keys and principals, rate limits, budgets and token caps."""
