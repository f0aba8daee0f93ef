"""The HTTP kit every route uses: errors, JSON responses, the middleware, the OpenAPI document."""
