"""Automated canary analysis: step a canary's weight up while its golden metrics hold."""
