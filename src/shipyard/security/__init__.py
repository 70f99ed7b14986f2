"""Who may do what: API keys, roles, the policy every endpoint goes through, rate limits."""
