"""`mlxhv data topics` and `mlxhv data generate`: dataset generation through an OpenAI-compatible API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlxhv.schema import DOMAINS


def _client_options(f):
    """Options shared by both commands: where the API is and how to talk to it."""
    opts = [
        click.option("--base-url", default=None, help="An OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1 "
                     "(mlx_lm.server). Default: api.openai.com. The key is read from $OPENAI_API_KEY."),
        click.option("--mode", type=click.Choice(["structured", "prompt"]), default="structured", show_default=True,
                     help="structured: response_format JSON schema; prompt: schema in the prompt, for servers "
                          "that ignore response_format (mlx_lm.server)."),
        click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight."),
        click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
                     help="Seconds per request."),
        click.option("--max-retries", type=int, default=6, show_default=True,
                     help="Retries of a request on 429 / 5xx / timeouts (honouring Retry-After)."),
        click.option("--backoff", "backoff_base_s", type=float, default=1.0, show_default=True,
                     help="First retry wait in seconds when the server gives no Retry-After (doubles each time)."),
        click.option("--max-fix-rounds", type=int, default=2, show_default=True,
                     help="Re-asks with the validation errors before a reply counts as invalid."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (not sent by default; "
                     "o1-class models reject it)."),
        click.option("--price", "prices", multiple=True, metavar="MODEL=IN,OUT",
                     help="USD per 1M input/output tokens for the ledger (repeatable)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--force", is_flag=True, help="Overwrite / discard an existing output and start over."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _client_settings(base_url, mode, timeout_s, max_retries, backoff_base_s, max_fix_rounds, temperature):
    from mlxhv.datagen import ClientSettings

    return ClientSettings(base_url=base_url, mode=mode, timeout_s=timeout_s, max_retries=max_retries,
                          backoff_base_s=backoff_base_s, max_fix_rounds=max_fix_rounds, temperature=temperature)


def _prices(items) -> dict:
    from mlxhv.datagen.ledger import DEFAULT_PRICES, parse_price

    prices = dict(DEFAULT_PRICES)
    for text in items:
        try:
            model, price = parse_price(text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--price")
        prices[model] = price
    return prices


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated levels such as 1,2,3,4", param_hint="--levels")


def _confirm_cost(settings) -> None:
    """Show what the run is expected to cost and ask; no answer or "no" is a SettingsError (nothing called)."""
    from mlxhv.datagen import make_client
    from mlxhv.datagen.estimate import estimate_remaining
    from mlxhv.errors import SettingsError

    make_client(settings.client)  # a missing API key fails before the question
    n, est = estimate_remaining(settings)
    click.echo(est.format(f"estimated tokens and cost of the {n} example(s) to write (assumes "
                          f"{settings.est_reject_rate:.0%} regenerated, {settings.est_writer_completion_tokens} "
                          "completion tokens per writer call incl. reasoning)"), err=True)
    try:
        ok = click.confirm("go ahead?", default=False, err=True)
    except click.Abort:  # end of input: nobody to ask
        ok = None
    if not ok:
        raise SettingsError("not confirmed, nothing was called" if ok is False else
                            "no answer to \"go ahead?\" on standard input; pass --yes to run without asking")


def _run(fn):
    """Run a generation job (its errors are MlxhvErrors: the app's one mapper prints them)."""
    return fn()


@click.command()
@click.option("-n", "n", type=int, default=60, show_default=True, help="Topics in all, spread evenly.")
@click.option("--domains", default=",".join(DOMAINS), show_default=True, help="Comma-separated domains.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Topics JSONL to write.")
@click.option("--model", default="o1", show_default=True, help="The model that writes the topics.")
@click.option("--max-tokens", type=int, default=16000, show_default=True,
              help="Completion token limit per request (reasoning included).")
@_client_options
def topics(n, domains, out, model, max_tokens, base_url, mode, concurrency, timeout_s, max_retries,
           backoff_base_s, max_fix_rounds, temperature, prices, no_progress, force):
    """Generate N distinct topics spread evenly over the domains (de-duplicated) into a topics JSONL."""
    from mlxhv.datagen import TopicsSettings, generate_topics

    settings = TopicsSettings(out=out, n=n, domains=_csv(domains) or DOMAINS, model=model, max_tokens=max_tokens,
                              concurrency=concurrency, force=force, progress=not no_progress,
                              prices=_prices(prices),
                              client=_client_settings(base_url, mode, timeout_s, max_retries, backoff_base_s,
                                                      max_fix_rounds, temperature))
    report = _run(lambda: generate_topics(settings, echo=click.echo))
    if report.shortfall or report.aborted:
        short = ", ".join(f"{d} {k}" for d, k in report.shortfall.items())
        again = "with --force " if report.topics else ""
        click.echo(f"short of the quota ({short}); run again {again}to retry", err=True)
        sys.exit(1)


@click.command()
@click.option("--topics", "topics_path", type=click.Path(path_type=Path), required=True, help="Topics JSONL.")
@click.option("-n", "n", type=int, default=350, show_default=True, help="Examples to plan.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Examples JSONL (appended).")
@click.option("--seed", type=int, default=0, show_default=True, help="Plan seed.")
@click.option("--domains", default=None, help="Comma-separated subset (default: every domain in the topics).")
@click.option("--levels", default="1,2,3,4", show_default=True, help="Curriculum levels to plan.")
@click.option("--id-prefix", default="gen", show_default=True, help="Ids are PREFIX-fin-0001 …")
@click.option("--writer-model", default="o1", show_default=True, help="The model that writes the examples.")
@click.option("--qa-model", default="gpt-4o-mini", show_default=True, help="The QA judge that grades each example.")
@click.option("--no-qa", is_flag=True, help="Keep every valid example without the QA judge.")
@click.option("--writer-max-tokens", type=int, default=16000, show_default=True,
              help="Completion token limit per writer request (reasoning included).")
@click.option("--qa-max-tokens", type=int, default=4000, show_default=True,
              help="Completion token limit per QA request.")
@click.option("--max-attempts", type=int, default=4, show_default=True,
              help="Writer attempts per example (invalid replies and QA rejections alike).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the estimated token cost; call nothing.")
@click.option("-y", "--yes", is_flag=True, help="Run without showing the cost estimate and asking first.")
@click.option("--est-writer-tokens", type=int, default=2500, show_default=True,
              help="Dry run: completion tokens per writer call, reasoning included (~600 for non-reasoning models).")
@click.option("--est-reject-rate", type=float, default=0.25, show_default=True,
              help="Dry run: share of examples expected to be regenerated.")
@_client_options
def generate(topics_path, n, out, seed, domains, levels, id_prefix, writer_model, qa_model, no_qa,
             writer_max_tokens, qa_max_tokens, max_attempts, dry_run, yes, est_writer_tokens, est_reject_rate,
             base_url, mode, concurrency, timeout_s, max_retries, backoff_base_s, max_fix_rounds, temperature,
             prices, no_progress, force):
    """Generate a planned, balanced curriculum of examples, graded by a QA judge; resumes after a kill. Shows the
    estimated cost of what is left to write and asks first (--yes skips the question)."""
    from mlxhv.datagen import DatagenSettings, dry_run as plan_only, generate_examples

    settings = DatagenSettings(
        topics=topics_path, out=out, n=n, seed=seed, domains=_csv(domains), levels=_levels(levels),
        id_prefix=id_prefix, writer_model=writer_model, qa_model=qa_model, qa=not no_qa,
        writer_max_tokens=writer_max_tokens, qa_max_tokens=qa_max_tokens, max_attempts=max_attempts,
        concurrency=concurrency, force=force, progress=not no_progress, prices=_prices(prices),
        est_writer_completion_tokens=est_writer_tokens, est_reject_rate=est_reject_rate,
        client=_client_settings(base_url, mode, timeout_s, max_retries, backoff_base_s, max_fix_rounds, temperature))
    if dry_run:
        _run(lambda: plan_only(settings, echo=click.echo))
        return
    if not yes:
        _confirm_cost(settings)
    report = _run(lambda: generate_examples(settings, echo=click.echo))
    if not report.complete:
        sys.exit(1)
