"""`mlxhv serve`: the judge behind an OpenAI-compatible /v1/chat/completions (see mlxhv/serve.py)."""

from __future__ import annotations

import logging

import click

from mlxhv.cli.judge import judge_options, load_judge


@click.command("serve")
@judge_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Concurrent requests decoded together in one engine call.")
@click.option("--batch-wait", type=float, default=0.02, show_default=True,
              help="Seconds an idle server waits after a request for others to batch with it.")
@click.option("--model-name", default=None, help="The model id clients see (default: --model).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO",
              show_default=True)
def serve(model, adapter, precision, max_tokens, temperature, top_p, seed, answer_prefix, system_prompt_file,
          max_prompt_tokens, host, port, max_batch, batch_wait, model_name, log_level):
    """Serve the judge to OpenAI clients: set base_url to http://HOST:PORT/v1 and send the input as the user
    message, {"hypothesis": …, "evidence": [...]} in JSON."""
    from mlxhv.serve import ServeSettings, serve as run_server

    logging.basicConfig(level=getattr(logging, log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(host=host, port=port, max_batch=max_batch, batch_wait_s=batch_wait,
                             model_name=model_name)
    j = load_judge(model, adapter, precision=precision, max_tokens=max_tokens, temperature=temperature,
                   top_p=top_p, seed=seed, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file,
                   max_prompt_tokens=max_prompt_tokens)
    run_server(j, settings, on_ready=lambda server: click.echo(
        f"serving {server.model_name} at {server.base_url} (Ctrl-C stops)", err=True))
