"""Applying plans: the runner (snapshot, plan, apply, re-plan), the block writer, kdump, the lock."""
