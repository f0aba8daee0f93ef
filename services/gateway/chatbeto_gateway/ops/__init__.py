"""Operations routes: liveness, readiness, Prometheus metrics, the OpenAPI document."""
