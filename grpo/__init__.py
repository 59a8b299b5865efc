"""GRPO for driving policies: group advantages, the clipped loss, the Beta action distribution, policies."""
