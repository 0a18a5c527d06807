"""`mlxhv serve`: the judge behind an OpenAI-compatible /v1/chat/completions (see mlxhv/serve.py)."""

from __future__ import annotations

import logging

import click

from mlxhv.cli.judge import judge_options, load_judge


@click.command("serve")
@judge_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--max-batch", type=int, default=16, show_default=True,
              help="Rows decoded together; requests join and leave the running batch between steps.")
@click.option("--batch-wait", type=float, default=0.02, show_default=True,
              help="Seconds an idle server waits after a request for others to start with it.")
@click.option("--max-connections", type=int, default=64, show_default=True,
              help="Open client connections at most; beyond, 503 with Retry-After.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests waiting to join the batch at most; beyond, 429 with Retry-After.")
@click.option("--request-timeout", type=float, default=300.0, show_default=True,
              help="Seconds from receiving a request to its reply; beyond, 504 and its row leaves the batch.")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True,
              help="Largest request body accepted (413 beyond).")
@click.option("--fast-kernels/--no-fast-kernels", default=True, show_default=True,
              help="The engine's own CPU blocks (mlxhv.kernels) or mlx-lm's.")
@click.option("--model-name", default=None, help="The model id clients see (default: --model).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO",
              show_default=True, help="Server log verbosity.")
def serve(model, adapter, no_adapter, precision, max_tokens, temperature, top_p, seed, answer_prefix,
          system_prompt_file, max_prompt_tokens, host, port, max_batch, batch_wait, max_connections, max_queue,
          request_timeout, max_body_bytes, fast_kernels, model_name, log_level):
    """Serve the judge to OpenAI clients: set base_url to http://HOST:PORT/v1 and send the input as the user
    message, {"hypothesis": …, "evidence": [...]} in JSON. SIGTERM drains: requests in flight are answered, new
    ones refused (503), then it exits."""
    from mlxhv.serve import ServeSettings, serve as run_server

    logging.basicConfig(level=getattr(logging, log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(host=host, port=port, max_batch=max_batch, batch_wait_s=batch_wait,
                             max_connections=max_connections, max_queue=max_queue, request_timeout_s=request_timeout,
                             max_body_bytes=max_body_bytes, model_name=model_name,
                             fast_kernels=fast_kernels)
    j = load_judge(model, adapter, no_adapter, precision=precision, max_tokens=max_tokens, temperature=temperature,
                   top_p=top_p, seed=seed, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file,
                   max_prompt_tokens=max_prompt_tokens)
    run_server(j, settings, on_ready=lambda server: click.echo(
        f"serving {server.model_name} at {server.base_url} (Ctrl-C stops, SIGTERM drains)", err=True))
