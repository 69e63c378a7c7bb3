"""What every app may use: domain errors, the API error envelope, middleware."""
