"""Invitations: the email that tells a person about their license."""
