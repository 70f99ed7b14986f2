"""Model CI/CD: evaluation against the champion, replay of logged traffic, promotion
policy as a file, approval, and guardrails after promotion (docs/promotion.md)."""
