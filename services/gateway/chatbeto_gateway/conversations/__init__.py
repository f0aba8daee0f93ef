"""Conversations (contract 3.1): the seed conversation and chat routes, and their reads."""
