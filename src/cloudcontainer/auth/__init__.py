"""Accounts, sessions, credentials and mail."""
