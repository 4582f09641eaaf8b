"""Prompts shared by the end-to-end tests (plain text; the tiny models tokenize anything)."""

PROMPTS = [
    "Hello there",
    "The quick brown fox jumps over the lazy dog and keeps running far away",
    "What is the capital of France?",
    "Count from one to ten: 1 2 3",
    "Write a short poem about the sea.",
    "Block diffusion",
    "I am fine, thank you. How are you today, my friend? Tell me everything.",
    "Paris",
]
