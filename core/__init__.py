"""What every app may use: domain errors, the API error envelope, middleware, the client's
address and when a person last signed in."""
