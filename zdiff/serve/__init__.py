"""`zdiff serve`: an OpenAI-compatible HTTP server on the decode engine.

One module per concern:
- `schemas`: the request bodies (pydantic) and their mapping onto engine RequestParams;
- `openai_format`: the response, stream-chunk and error objects OpenAI clients parse;
- `text_stream`: tokens -> text deltas, UTF-8 safe, with stop strings across chunk boundaries;
- `chat_template`: the checkpoint's Jinja2 chat template;
- `worker`: the one thread that drives the (not thread-safe) Engine, continuous batching;
- `metrics`: Prometheus metrics (request counters + a collector over the engine's stats);
- `app`: the FastAPI routes, auth and error handlers; `cli_run`: `zdiff serve`.

FastAPI, uvicorn and prometheus-client come with the optional extra `zdiff[serve]`.
"""
