"""Users' homes: the persistent volume each user's servers mount (storage), its snapshots,
retention of a deleted user's home, and what an operator or a user does to one (operations)."""
