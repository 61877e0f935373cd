"""Policy: which virtual patch applies where and how (store, compiled form). See docs/policy.md."""
