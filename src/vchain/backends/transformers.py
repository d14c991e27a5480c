"""Open-weight reasoning in process: `TransformersChatModel` runs a Hugging Face vision-language model;
`TransformersReasoner` and `TransformersJudge` are the reasoner and the judge on it.

Any image-text-to-text checkpoint that `transformers.AutoModelForImageTextToText` loads and whose chat
template takes images works; Qwen2.5-VL, Qwen3-VL and Gemma 3 are tested. Every answer is decoded under
a grammar compiled from the answer's pydantic schema (llguidance), so the model can only write a valid
object and then stop: even random weights return a well-formed `ScenePlan`. No key, no server, no data
leaves the process.

Example::

    import torch
    from vchain.backends.transformers import TransformersReasoner

    reasoner = TransformersReasoner.from_pretrained(
        "Qwen/Qwen2.5-VL-7B-Instruct", dtype=torch.bfloat16, device="cuda"
    )
    plan = reasoner.plan("A glass of water is knocked off a table.")
    reasoner.release()  # hand the GPU memory to the next stage
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from pydantic import BaseModel, ValidationError
from transformers import LogitsProcessor, LogitsProcessorList

from vchain._hub import check_hub_options, resolve_pretrained, weights_identity
from vchain.accounting import report_request
from vchain.config import check_device, describe_errors
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError
from vchain.interfaces import ChatModel
from vchain.judging import ChatJudge
from vchain.reasoning import ChatReasoner

T = TypeVar("T")

# About a thousand vision tokens per image for Qwen2.5-VL (one token per 28x28 pixels), enough to read a
# stitched chain of several 832x480 keyframes; the composite is scaled down to fit before processing.
DEFAULT_MAX_PIXELS = 1024 * 28 * 28
# The bound on every string of an answer, in characters. A model that never closes a string (a weak or
# random one) is cut off here by the grammar, so an answer always ends; 1500 characters (about 250
# words) leaves room for the plan's longest field, the scene's full description.
DEFAULT_MAX_STRING_LENGTH = 1500
# Enough for a plan whose four strings are long (about 4 characters a token), with room to spare.
DEFAULT_MAX_NEW_TOKENS = 2048
# JSON's exactly representable integers: the range an integer without one of its own is held to, so
# that a model writing digits is stopped after 16 of them.
_MAX_SAFE_INTEGER = 2**53 - 1
# String fields that may be empty: a verdict that the keyframe matches has no problem to state.
_MAY_BE_EMPTY = frozenset({"problem"})
_INSTALL = "pip install 'vchain[local]' (or: pip install llguidance)"


class TransformersChatModel(ChatModel):
    """A vision-language model from transformers, answering in grammar-constrained JSON.

    Args:
        model: a loaded image-text-to-text model (e.g. `Qwen2_5_VLForConditionalGeneration`), on the
            device it should run on (you own its device and dtype).
        processor: the model's processor: tokenizer (a fast one), image processor and chat template.
        max_new_tokens: the most tokens one answer may take; an answer cut off here is malformed and the
            reasoning loop asks again.
        temperature: None decodes greedily (deterministic); a positive value samples, seeded by `seed`.
        seed: seeds sampling (unused when greedy); the global torch RNG is left as it was.
        max_pixels: every image is scaled down to at most this many pixels before the processor sees it,
            which bounds the vision tokens of the wide stitched chain (models that resize every image to
            a fixed size, such as Gemma 3, spend the same tokens either way).
        max_string_length: the longest string the grammar lets an answer hold, in characters.
        model_id: the name manifests record; by default the name the model was loaded from (the last
            part of a local folder's path).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float | None = None,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        model_id: str | None = None,
    ):
        llguidance = _llguidance()
        if isinstance(model, (str, Path)):
            raise ConfigurationError(
                f"model must be a loaded transformers model, got {model!r}; "
                f"use {type(self).__name__}.from_pretrained({str(model)!r})"
            )
        if not callable(getattr(model, "generate", None)):
            raise ConfigurationError(f"model must be a transformers model with generate(), got {type(model).__name__}")
        tokenizer = getattr(processor, "tokenizer", None)
        if not getattr(tokenizer, "is_fast", False) or not callable(getattr(processor, "apply_chat_template", None)):
            raise ConfigurationError(
                "processor must be a transformers processor with a fast tokenizer and a chat template, "
                f"got {type(processor).__name__}"
            )
        for name, value in (
            ("max_new_tokens", max_new_tokens),
            ("max_pixels", max_pixels),
            ("max_string_length", max_string_length),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if temperature is not None and not (
            isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and 0 < temperature <= 2
        ):
            raise ConfigurationError(f"temperature must be None (greedy) or in (0, 2], got {temperature!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigurationError(f"seed must be an integer, got {seed!r}")
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.max_pixels = max_pixels
        self.max_string_length = max_string_length
        self.model_id = model_id or _model_name(getattr(model, "name_or_path", "")) or type(model).__name__
        self.weights: dict | None = None  # which weights, when from_pretrained loaded them (no token)
        self.stop_tokens = _stop_tokens(model, tokenizer)
        # Answers end at the same tokens for the grammar as for generate(); the grammar only allows
        # them once the object is complete.
        vocab_size = max(model.config.get_text_config().vocab_size, len(tokenizer))
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.stop_tokens)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        *,
        dtype=None,
        torch_dtype=None,
        device: str | torch.device | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float | None = None,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        revision: str | None = None,
        variant: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> TransformersChatModel:
        """Load an image-text-to-text checkpoint (a hub id or a local folder) and its processor.

        Args:
            model_id: e.g. `"Qwen/Qwen2.5-VL-7B-Instruct"`, `"Qwen/Qwen3-VL-8B-Instruct"`,
                `"google/gemma-3-4b-it"`, or a folder laid out like one.
            dtype: the weights' dtype (`torch_dtype=` is the older name); default: the checkpoint's.
            device: where to load the weights (e.g. `"cuda"`); default: the CPU.
            revision, variant, cache_dir, token, local_files_only: transformers' hub keywords, passed through
                (the processor is read at the same revision). The commit the revision resolved to (or the
                folder's path) goes into `describe()`, hence into manifests; the token does not.
            **kwargs: passed to `AutoModelForImageTextToText.from_pretrained` (e.g. `attn_implementation`);
                the other keywords are the constructor's.

        The checkpoint is found first, so a wrong id or folder fails at once with what to do.
        """
        from transformers import AutoModelForImageTextToText

        settings = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            max_pixels=max_pixels,
            max_string_length=max_string_length,
        )
        _llguidance()
        if dtype is not None and torch_dtype is not None:
            raise ConfigurationError("pass dtype= or its older name torch_dtype=, not both")
        dtype = _dtype(dtype if dtype is not None else torch_dtype)
        if device is not None:
            check_device(device)
        check_hub_options(variant=variant)
        source = resolve_pretrained(
            model_id,
            what="reasoner weights",
            marker="config.json",
            argument="model_id",
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        if device is not None:
            kwargs["device_map"] = device
        if variant:
            kwargs["variant"] = variant
        try:
            model = AutoModelForImageTextToText.from_pretrained(**source, dtype=dtype, **kwargs)
            processor = _load_processor(source, model.config)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigurationError(
                f"cannot load {str(model_id)!r} as an image-text-to-text model: {type(e).__name__}: {e}"
            ) from e
        reasoner = cls(model.eval(), processor, model_id=_model_name(model_id), **settings)
        identity = weights_identity(source, "config.json", variant)
        # A local folder stays named by `model_id` (its last part): the reasoner's description is an input of
        # paid reasoning, which a moved folder must not invalidate, and a manifest holds no full path of it.
        reasoner.weights = None if "path" in identity else identity
        return reasoner

    # -- the ChatModel

    def complete(self, messages: list[dict], schema: type[T]) -> T:
        """Answer chat `messages` with an instance of `schema`, decoded under its JSON grammar.

        Args:
            messages: vchain's neutral chat messages (see `vchain.prompts`); an image part is
                `{"type": "image", "image": PIL.Image}`.
            schema: the pydantic model of the answer, flat or nested; the grammar is its JSON schema
                tightened by `constrained_schema` (closed objects, bounded strings and integers). `str`
                asks for text: one JSON string of at most `max_string_length` characters, so it ends.

        Raises `MalformedResponseError` when the answer was cut off by `max_new_tokens` or does not
        validate (worth asking again), `BackendError` when generation itself fails. Each call is
        reported to `vchain.accounting` with its tokens, images and time.
        """
        inputs = self._inputs(messages)
        usage = {
            "model": self.model_id,
            "input_tokens": inputs["input_ids"].shape[1],
            "images_in": sum(part.get("type") == "image" for part in _parts(messages)),
        }
        matcher = _llguidance().LLMatcher(self._tokenizer, _grammar(schema, self.max_string_length))
        constraint = _GrammarConstraint(matcher, self._tokenizer.vocab_size, self.stop_tokens)
        tokens, usage["seconds"] = self._generate(inputs, constraint, usage)
        usage["output_tokens"] = len(tokens)
        try:
            answer = self._parse(tokens, constraint, schema)
        except MalformedResponseError as e:
            report_request(outcome="malformed", error=str(e), **usage)
            raise
        report_request(**usage)
        return answer

    def _generate(self, inputs, constraint: _GrammarConstraint, usage: dict) -> tuple[list[int], float]:
        """The answer's token ids (the prompt left out) and the seconds generate() took."""
        prompt_length = inputs["input_ids"].shape[1]
        start = time.perf_counter()
        try:
            with torch.inference_mode(), self._rng():
                output = self.model.generate(
                    **inputs,
                    logits_processor=LogitsProcessorList([constraint]),
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=self.stop_tokens,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                    **self._sampling(),
                )
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            report_request(outcome="failed", seconds=time.perf_counter() - start, error=error, **usage)
            raise BackendError(f"{self.model_id} failed to generate: {error}") from e
        return output[0, prompt_length:].tolist(), time.perf_counter() - start

    def _parse(self, tokens: list[int], constraint: _GrammarConstraint, schema: type[T]) -> T:
        if not tokens or tokens[-1] not in self.stop_tokens:
            raise MalformedResponseError(
                f"{self.model_id} used all max_new_tokens={self.max_new_tokens} before finishing its "
                f"{schema.__name__}; raise max_new_tokens or lower max_string_length"
            )
        if constraint.error:
            raise MalformedResponseError(f"{self.model_id} left the {schema.__name__} grammar: {constraint.error}")
        text = self.processor.tokenizer.decode(tokens[:-1], skip_special_tokens=True)
        try:
            if schema is str:
                return json.loads(text).strip()
            return schema.model_validate_json(text)
        except (ValueError, AttributeError) as e:  # the grammar allows neither; a tokenizer may still garble
            raise MalformedResponseError(f"{self.model_id} did not return a JSON string: {text[:120]!r}") from e
        except ValidationError as e:
            raise MalformedResponseError(
                f"{self.model_id} did not return a valid {schema.__name__}: {describe_errors(e)}"
            ) from e

    # -- memory and records

    def to(self, device: str | torch.device) -> TransformersChatModel:
        """Move the model to `device`, e.g. back to `"cuda"` after `release()`."""
        self.model.to(device)
        return self

    def release(self) -> None:
        """Give the accelerator memory back: the weights move to the CPU and the CUDA cache is emptied.

        Call it when the reasoner's stage is over so that the next model fits (Qwen2.5-VL-7B, 8.3 B
        parameters, holds about 17 GB in bfloat16). The reasoner still works afterwards, on the CPU;
        `.to("cuda")` brings it back.
        """
        self.model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "model": self.model_id,
            **({"weights": self.weights} if self.weights else {}),
            # Which folder the weights came from: two checkpoints that share a folder name are two models and
            # must not share a run's chain or a judge's scores. A digest, so no record holds a local path.
            "checkpoint": _checkpoint_identity(getattr(self.model, "name_or_path", "") or self.model_id),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed if self.temperature is not None else None,
            "max_pixels": self.max_pixels,
            "max_string_length": self.max_string_length,
            "checkpoint_decoding": self._checkpoint_decoding(),
        }

    # -- helpers

    def _inputs(self, messages: list[dict]):
        """The model's inputs for `messages`: chat template, images within `max_pixels`, token ids.

        The processor's whole output goes to `generate`: Qwen3-VL needs its `mm_token_type_ids` for
        the image positions and Gemma 3 its `token_type_ids`. Control tokens typed inside the text
        (a prompt holding "<|im_end|>", say) are encoded as plain text, never as the template's own.
        """
        bounded = []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                content = [
                    {**part, "image": _within(part["image"], self.max_pixels)} if part.get("type") == "image" else part
                    for part in content
                ]
            bounded.append({**message, "content": content})
        inputs = self.processor.apply_chat_template(
            bounded,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
        )
        return inputs.to(self.model.device)

    def _sampling(self) -> dict[str, Any]:
        if self.temperature is None:
            # Unset the checkpoint's sampling defaults, which greedy decoding ignores (and warns about).
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
        return {"do_sample": True, "temperature": float(self.temperature)}

    def _checkpoint_decoding(self) -> dict[str, Any]:
        """The checkpoint's own decoding defaults that still shape the answer (generate() applies them)."""
        names = ["repetition_penalty", "no_repeat_ngram_size"]
        if self.temperature is not None:
            names += ["top_k", "top_p", "min_p"]
        config = getattr(self.model, "generation_config", None)
        return {name: getattr(config, name) for name in names if getattr(config, name, None) is not None}

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        """Seed sampling without touching the caller's random state; greedy decoding needs no seed."""
        if self.temperature is None:
            yield
            return
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            yield


class _GrammarConstraint(LogitsProcessor):
    """Masks every token the grammar does not allow next, for one generate() call with batch size 1.

    The mask is unpacked eagerly: llguidance's torch helpers are `torch.compile`d (importing them pulls
    in the compiler, and their first CPU call takes half a minute), a few tensor operations are not.
    Should the matcher fail, only the stop tokens remain, so the answer ends and `error` says why.
    """

    def __init__(self, matcher, vocab_size: int, stop_tokens: list[int]):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.stop_tokens = stop_tokens
        self.error = matcher.get_error() if matcher.is_error() else ""
        self._consumed: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        if self._consumed is None:
            self._consumed = input_ids.shape[1]  # the prompt
        for token in input_ids[0, self._consumed :].tolist():
            if not self.error and not self.matcher.consume_token(token):
                self.error = self.matcher.get_error() or f"token {token} is not allowed"
        self._consumed = input_ids.shape[1]
        if self.error:
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
            allowed[self.stop_tokens] = True
        else:
            bitmask = allocate_token_bitmask(1, self.vocab_size)
            fill_next_token_bitmask(self.matcher, bitmask)
            words = torch.from_numpy(bitmask[0])
            allowed = ((words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1).flatten()[: scores.shape[-1]] == 1
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def constrained_schema(schema: type[BaseModel], max_string_length: int) -> dict:
    """The JSON schema the decoder is held to: `schema`'s own, tightened so that every answer ends.

    Objects take no keys beyond their fields (otherwise a model may invent keys forever), every
    string holds 1 to `max_string_length` characters (so it is neither empty nor endless; fields in
    `_MAY_BE_EMPTY` may be empty), and an integer without a range of its own stays within
    +-`_MAX_SAFE_INTEGER`. A narrower range the answer needs (a score from 1 to 5) belongs in the
    schema as `Field(ge=..., le=...)`: the grammar then enforces it too.
    """
    document = schema.model_json_schema()

    def tighten(node: Any, field: str | None = None) -> None:
        if isinstance(node, list):
            for item in node:
                tighten(item, field)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "object":
            node["additionalProperties"] = False
        if node.get("type") == "string":
            node["maxLength"] = min(node.get("maxLength", max_string_length), max_string_length)
            node.setdefault("minLength", 0 if field in _MAY_BE_EMPTY else 1)
        if node.get("type") == "integer":
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = -_MAX_SAFE_INTEGER
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = _MAX_SAFE_INTEGER
        for key, value in node.items():
            if key == "properties":
                for name, child in value.items():
                    tighten(child, name)
            else:
                tighten(value, field)

    tighten(document)
    return document


@functools.cache
def _grammar(schema: type[BaseModel], max_string_length: int) -> str:
    """llguidance's grammar for `schema`, compact JSON: free whitespace would let a model pad forever."""
    llguidance = _llguidance()
    if schema is str:
        document = {"type": "string", "minLength": 1, "maxLength": max_string_length}
    else:
        document = constrained_schema(schema, max_string_length)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(document), overrides={"whitespace_flexible": False}
    )
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConfigurationError(f"the JSON schema of {schema.__name__} is not supported by llguidance: {messages[0]}")
    return grammar


class _WithoutVideo:
    """Lets a Qwen-VL processor be built without its video processor, which needs torchvision."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def without_video(processor_class: type) -> type:
    """`processor_class` made to accept `video_processor=None`: Qwen-VL processors insist on a video
    processor, which needs torchvision; vchain sends images and text only."""
    return type(processor_class.__name__, (_WithoutVideo, processor_class), {})


def _load_processor(source: dict, config):
    """The checkpoint's processor. Where torchvision is missing, Qwen-VL's is assembled without video
    (`AutoProcessor` would fail on the video processor): vchain never sends video."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.utils import is_torchvision_available

    processor_class = PROCESSOR_MAPPING.get(type(config), None)
    if (
        processor_class is None
        or "video_processor" not in processor_class.get_attributes()
        or is_torchvision_available()
    ):
        return AutoProcessor.from_pretrained(**source)
    assembled = without_video(processor_class)
    parts = {
        "image_processor": AutoImageProcessor.from_pretrained(**source),
        "tokenizer": AutoTokenizer.from_pretrained(**source),
        "video_processor": None,
    }
    processor_dict, kwargs = assembled.get_processor_dict(**source)
    return assembled.from_args_and_dict([parts[name] for name in assembled.get_attributes()], processor_dict, **kwargs)


def _parts(messages: list[dict]) -> list[dict]:
    return [part for message in messages if isinstance(message["content"], list) for part in message["content"]]


def _within(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image` scaled down, aspect kept, to at most `max_pixels` pixels (as is when it fits)."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _stop_tokens(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the generation config's (end of turn) and the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    stops = [*configured, tokenizer.eos_token_id]
    return list(dict.fromkeys(token for token in stops if token is not None))


def _checkpoint_identity(source: object) -> str:
    """A hub id as is; a local folder as `folder:` and a digest of its resolved path."""
    path = Path(str(source)).expanduser()
    if not path.is_dir():
        return str(source)
    return "folder:" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def _model_name(model_id: object) -> str:
    """The name a manifest records: a hub id as is, a local folder by its last part (never a full path)."""
    text = str(model_id).rstrip("/")
    return Path(text).name if Path(text).expanduser().exists() else text


def _dtype(value) -> torch.dtype | str:
    """A floating torch dtype (names such as "bfloat16" too), or "auto": the checkpoint's own."""
    if value is None or value == "auto":
        return "auto"
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigurationError(f"dtype must be a floating torch dtype such as torch.bfloat16, got {value!r}")
    return dtype


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError as e:
        raise ConfigurationError(f"TransformersChatModel constrains its answers with llguidance: {_INSTALL}") from e
    return llguidance


class TransformersReasoner(TransformersChatModel, ChatReasoner):
    """`ChatReasoner` on a `TransformersChatModel`: open-weight reasoning in process.

    Takes the arguments of `TransformersChatModel`; `from_pretrained` loads a checkpoint.
    """

    def __init__(self, model, processor, **options: Any):
        ChatReasoner.__init__(self, self)
        TransformersChatModel.__init__(self, model, processor, **options)


class TransformersJudge(ChatJudge):
    """`ChatJudge` on a local vision-language model (`vchain judge --judge transformers:ID`).

    Its `VideoScores` answer is decoded under the schema's grammar (the 1-to-5 scale is an enum there)
    like every other local answer.

    Args:
        reasoner: the loaded model, as a `TransformersChatModel` (a `TransformersReasoner` is one), whose
            decoding settings apply.
        grid: send the frames tiled into one image instead of one image per frame.
    """

    def __init__(self, reasoner: TransformersChatModel, *, grid: bool = False):
        if not isinstance(reasoner, TransformersChatModel):
            raise ConfigurationError(
                f"reasoner must be a TransformersChatModel, got {type(reasoner).__name__}; "
                "use TransformersJudge.from_pretrained(model_id)"
            )
        super().__init__(reasoner, grid=grid)
        self.reasoner = reasoner

    @classmethod
    def from_pretrained(cls, model_id: str | Path, *, grid: bool = False, **kwargs: Any) -> TransformersJudge:
        """Load `model_id` as `TransformersChatModel.from_pretrained(model_id, **kwargs)` does."""
        return cls(TransformersChatModel.from_pretrained(model_id, **kwargs), grid=grid)

    def describe(self) -> dict[str, Any]:
        # The local model's own record, as judges' cache keys have always held it.
        return {**self.reasoner.describe(), "class": type(self).__name__, "grid": self.grid}
