"""The web page: a Gradio Blocks app mounted into the FastAPI application at ``/ui``.

People upload normal references and a test image, pick an expert, and see the heat-map overlay
beside the image, Myriad's answer, and a chat for follow-up questions. Every call goes through
the same :class:`~myriad.serve.service.InspectionService` as the REST API (same limits, same
lock, same shared model). Each browser session fits its own profile (``ui-<id>``), refitted only
when the expert, its options or the references change.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from myriad.errors import MyriadError
from myriad.serve.errors import NotFoundError, ServeError
from myriad.serve.limits import check_file_size, load_checked_image
from myriad.serve.service import InspectionService

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr
    from fastapi import FastAPI

__all__ = ["build_page", "mount_page"]

#: Element ids the end-to-end test (and any user script) can rely on.
ELEMENT_IDS = ("expert", "normal-files", "expert-config", "question", "inspect-button", "test-image", "overlay",
               "answer", "chat", "follow-up", "ask-button")


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page must work offline
    import gradio as gr

    return gr


def build_page(service: InspectionService) -> "gr.Blocks":
    """The Gradio Blocks of the inspection page, bound to ``service``."""
    gr = _gradio()
    names = service.expert_names()
    default = service.default_expert if service.default_expert in names else (names[0] if names else None)
    lmm_note = (
        f"Answers and follow-ups by the Myriad LMM (`{service.lmm_label}`)."
        if service.has_lmm
        else "Expert-only: this server runs without the Myriad LMM (`--lmm none`); follow-up questions are off."
    )
    with gr.Blocks(title="Myriad inspection", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# Myriad: industrial anomaly inspection\n{lmm_note}")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                expert = gr.Dropdown(names, value=default, label="Expert", elem_id="expert")
                normal = gr.File(
                    file_count="multiple", file_types=["image"], type="filepath", label="Normal reference images",
                    elem_id="normal-files",
                )
                with gr.Accordion("Expert options (JSON)", open=False):
                    config = gr.Textbox("{}", lines=2, show_label=False, elem_id="expert-config")
                question = gr.Textbox(label="Question (optional)", placeholder="empty: the paper's inspection question", elem_id="question")
                inspect_button = gr.Button("Inspect", variant="primary", elem_id="inspect-button")
            with gr.Column(scale=2):
                with gr.Row():
                    test_image = gr.Image(type="filepath", sources=["upload"], label="Test image", height=320, elem_id="test-image")
                    overlay = gr.Image(type="pil", label="Anomaly overlay", interactive=False, height=320, elem_id="overlay")
                answer = gr.Markdown(elem_id="answer")
                chat = gr.Chatbot(label="Follow-up questions", height=260, elem_id="chat")
                with gr.Row():
                    follow_up = gr.Textbox(label="Ask a follow-up", scale=4, elem_id="follow-up", interactive=service.has_lmm)
                    ask_button = gr.Button("Ask", scale=1, elem_id="ask-button", interactive=service.has_lmm)

        def on_inspect(expert_name: str, normal_files: Any, config_text: str, ask: str, image_path: str, state_value: Any) -> tuple:
            try:
                return _inspect(service, expert_name, normal_files, config_text, ask, image_path, state_value)
            except MyriadError as exc:
                raise gr.Error(str(exc)) from None

        def on_ask(text: str, history: Any, state_value: Any) -> tuple:
            if not state_value or not state_value.get("session"):
                raise gr.Error("inspect an image first")
            try:
                reply = service.ask(state_value["session"], text or "")
            except MyriadError as exc:
                raise gr.Error(str(exc)) from None
            history = list(history or []) + [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            return history, ""

        inspect_button.click(
            on_inspect, [expert, normal, config, question, test_image, state], [overlay, answer, chat, state], api_name=False
        )
        ask_button.click(on_ask, [follow_up, chat, state], [chat, follow_up], api_name=False)
        follow_up.submit(on_ask, [follow_up, chat, state], [chat, follow_up], api_name=False)
    return page


def _inspect(
    service: InspectionService,
    expert: str,
    normal_files: Any,
    config_text: str,
    ask: str,
    image_path: str,
    state: Any,
) -> tuple[Any, str, list, dict[str, Any]]:
    """Fit the session's profile if its inputs changed, then inspect; returns the page's outputs."""
    import io
    import json

    from PIL import Image

    if not image_path:
        raise ServeError("upload a test image first")
    files = [Path(f) for f in (normal_files or [])]
    state = dict(state or {})
    profile = state.get("profile") or f"ui-{uuid.uuid4().hex[:12]}"
    state["profile"] = profile
    key = [expert, (config_text or "").strip(), [(str(f), f.stat().st_size) for f in files]]
    try:
        current = service.store.get_profile(profile) if state.get("key") == key else None
    except NotFoundError:  # dropped from the store: fit again
        current = None
    if current is None:
        try:
            config = json.loads(config_text) if (config_text or "").strip() else {}
        except json.JSONDecodeError as exc:
            raise ServeError(f"expert options: not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ServeError("expert options: must be a JSON object")
        images = []
        for f in files:
            check_file_size(f, f.name, service.limits)
            images.append(load_checked_image(f, f.name, service.limits))
        service.fit_profile(profile, images, expert=expert, config=config)
        state["key"] = key
    path = Path(image_path)
    check_file_size(path, path.name, service.limits)
    image = load_checked_image(path, path.name, service.limits)
    session = service.inspect(profile, image, path.name, ask or None)
    state["session"] = session.id
    overlay = Image.open(io.BytesIO(session.overlay_png))
    return overlay, describe(session.result, service.has_lmm), [], state


def describe(result: Any, has_lmm: bool) -> str:
    """The page's Markdown summary of one result: verdict, score, answer, timings."""
    verdict = f"**{result.decision.upper()}**: calibrated score {result.score:.2f} (threshold {result.threshold:.2f}), "
    verdict += f"expert `{result.expert}` ({result.mode}) says {result.expert_decision}."
    if has_lmm:
        answer = f"\n\n**Myriad:** {result.answer.strip() or '(empty answer)'}"
    else:
        answer = "\n\n_Expert-only answer: the server runs without the Myriad LMM._"
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    return f"{verdict}{answer}\n\n<small>{timings}</small>"


def mount_page(app: "FastAPI", service: InspectionService, path: str = "/ui") -> "FastAPI":
    """Mount the page into ``app`` at ``path`` (no server-side rendering, no analytics, system fonts)."""
    gr = _gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(
        app,
        build_page(service),
        path=path,
        max_file_size=service.limits.max_upload_bytes,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
    )
