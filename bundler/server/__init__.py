"""Serving: the ASGI app of a Service and how it is started.

    app.py      build_app(svc, ...) -> ServiceApp (Starlette): API fast path, health, readiness, errors
    metrics.py  Prometheus families of one app; the Batcher observer
    docs.py     /docs (local Swagger UI assets) and /docs.json
    serve.py    load_service(target) and serve(target, ...) on uvicorn (workers, reload, graceful SIGTERM)
    testing.py  running(app): a real uvicorn server in a thread, for tests and benchmarks

Submodules import starlette and uvicorn; this package imports nothing, so ``import bundler`` stays light.
"""
