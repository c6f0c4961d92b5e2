"""Every pipeline class diffusers exports, classified: the one table ``crossgate.apply`` consults.

"Every pipeline class" is :func:`exported_pipelines`: each ``DiffusionPipeline`` (or ``ModularPipeline``)
subclass diffusers exports, whatever its name (``StableDiffusionPipelineSafe``, ``SanaWMLTX2Refiner``), and
the placeholders diffusers exports for pipelines whose optional backend is missing (ONNX).

Each class is in exactly one bucket:

* :data:`SUPPORTED`: run end to end on a tiny random-weight build in ``tests/families.py`` (the
  entry names the case), so its denoiser, cross-attention and CFG layout are known to work;
* :data:`SEQUENTIAL_CFG`: calls the denoiser once per CFG branch and has cross-attention; its status
  comes from :mod:`crossgate.adapters.sequential` (supported where listed there, refused with
  :func:`~crossgate.adapters.sequential.per_branch_refusal` otherwise);
* :data:`REFUSED`: has cross-attention but cannot (or has not been shown to) be gated; the reason;
* :data:`NOT_APPLICABLE`: nothing to gate (no cross-attention, or no ``unet``/``transformer``).

Why a table and not a rule: a rule ("has a ``unet`` with ``attn2`` and batches CFG") accepted
pipelines that then raised mid-call (PAG's three-way batch, InstructPix2Pix) or gated them wrongly
(Panorama's per-window passes, since supported by an adapter of its own). Now a class nobody has
classified is refused, and ``tests/test_classification.py`` fails when a diffusers release exports
one, so the table cannot go stale.

User subclasses resolve to their nearest diffusers ancestor. One that overrides ``__call__`` has an
untested loop and is refused unless the user vouches for it with :func:`allow_untested`, which also
admits diffusers classes refused only for being untested (never one refused for a cause, such as a
batch of more than two guidance branches: the opt-in cannot make those work, so it must not let a call
start that would fail midway). Every reason names what can be checked in the pipeline's source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from crossgate.adapters.base import ModelAdapter
from crossgate.adapters.sequential import SEQUENTIAL_ADAPTERS, WAN, per_branch_refusal

UNET = ModelAdapter(family="unet", denoiser_attr="unet", control_attr="controlnet")
TRANSFORMER = ModelAdapter(family="transformer", denoiser_attr="transformer")
# Stable Video Diffusion's unconditional half is all zeros (image embeddings and image latents), so
# feeding it after the gate would drop the image conditioning; the original release feeds the cond half.
SVD = ModelAdapter(family="svd", denoiser_attr="unet", post_gate_inputs="cond")
# Sana Sprint is guidance-distilled (guidance is an embedding input) and never batches CFG, but it has
# no `do_classifier_free_guidance` and its encode_prompt takes no CFG flag: without this the first
# denoiser pass could not tell whether to halve the batch and would raise mid-call.
SANA_SPRINT = ModelAdapter(family="sana-sprint", denoiser_attr="transformer", fixed_cfg=False)
# Lumina-Next batches CFG as [cond; uncond] (prompt first, negative prompt second).
LUMINA = ModelAdapter(family="lumina", denoiser_attr="transformer", cond_first=True)
# Panorama (MultiDiffusion) runs one UNet pass per view window in every step, CFG interleaved per view
# ([u0, c0, u1, c1, ...]); its `do_classifier_free_guidance` property is always False (the loop decides
# from guidance_scale and tells encode_prompt). Semantics: crossgate.hooks.
PANORAMA = ModelAdapter(
    family="panorama",
    denoiser_attr="unet",
    cfg_interleaved=True,
    per_pass_caches=True,
    cfg_from_encode_prompt=True,
)

# Joint-attention transformers (crossgate.joint): after the gate each joint block's text stream is
# frozen and the cond branch runs alone. SD3 batches CFG as [uncond; cond]; FLUX.1 runs real CFG
# (`true_cfg_scale > 1` with a negative prompt) as two calls named "cond" and "uncond", and none
# otherwise (guidance-distilled). The cond half feeds the passes after the gate: the text stream
# that is frozen is the prompt's.
SD3 = ModelAdapter(family="sd3", denoiser_attr="transformer", post_gate_inputs="cond", joint=True)
FLUX = ModelAdapter(
    family="flux", denoiser_attr="transformer", post_gate_inputs="cond", cfg_layout="sequential", joint=True
)
# The other joint families are one of these two CFG layouts with a few differences, written as such.
# SD3's ControlNet pipeline runs an SD3ControlNetModel (joint blocks of its own) beside the transformer
# at the same [uncond; cond] batch: after the gate it runs the cond half and its block residuals are
# handed back for both halves (the ControlNet's own text stream keeps computing).
SD3_CONTROLNET = replace(SD3, control_attr="controlnet")
# AuraFlow and CogVideoX batch CFG as [uncond; cond] like SD3 (AuraFlow's text stream starts with 8
# register tokens: crossgate.joint.prepended_text_tokens).
AURAFLOW = replace(SD3, family="auraflow")
COGVIDEOX = replace(SD3, family="cogvideox")
# FLUX.1's other pipelines (img2img, inpainting, Kontext) run the same true CFG without naming the
# calls: the cond call first, then the uncond one. Fill and Control (channel-concatenated
# conditioning) are guidance-distilled and call the transformer once per step. The ControlNet
# pipelines run their FluxControlNetModel once per step (the prompt's) and hand its residuals to both
# transformer calls; it is not gated (its text stream keeps computing).
FLUX_UNNAMED = replace(FLUX, branch_order=("cond", "uncond"))
# Chroma runs CFG like FLUX's unnamed pipelines (the cond call first); prompts are padded to
# max_sequence_length, so the branches' texts align.
CHROMA = replace(FLUX_UNNAMED, family="chroma")
# Qwen-Image and HunyuanVideo run real CFG like FLUX (`true_cfg_scale > 1`, named calls). Qwen-Image
# encodes the prompt and the negative prompt each to its own length, so their text streams cannot be
# averaged; HunyuanVideo pads both to max_sequence_length. (Qwen-Image's ControlNet pipeline runs its
# QwenImageControlNetModel once per step, outside the named calls, and hands the residuals to both:
# the ControlNet runs as written, as for FLUX.)
QWEN_IMAGE = replace(FLUX, family="qwen-image", branch_texts_aligned=False)
HUNYUAN_VIDEO = replace(FLUX, family="hunyuan-video")
# CogView4 names its two CFG calls like Qwen-Image, and pads each prompt to its own multiple of 16.
COGVIEW4 = replace(QWEN_IMAGE, family="cogview4")
# Lumina2 runs CFG as FLUX's unnamed pipelines do (the cond call first; `cfg_trunc_ratio` drops the
# uncond call in late steps). Its unified layers take each prompt unpadded, so the two branches' text
# streams differ in length.
LUMINA2 = replace(FLUX_UNNAMED, family="lumina2", branch_texts_aligned=False)
# Z-Image batches CFG as [cond; uncond] (prompt first) in lists of per-sample tensors, each caption at
# its own length; guidance_scale=0 (Z-Image-Turbo) runs no CFG.
Z_IMAGE = replace(SD3, family="z-image", cond_first=True, branch_texts_aligned=False, sample_lists=True)
# HiDream batches CFG as [uncond; cond] like SD3; its per-layer LLaMA states carry the batch second.
HIDREAM = replace(SD3, family="hidream", batch_dim1=("encoder_hidden_states_llama3",))

# Modular Diffusers pipelines (crossgate.adapters.modular): the loop block ticks the steps; the guider
# runs CFG as two unnamed calls of B rows, cond first, so every one of them is sequential CFG (SD3's
# too, though its classic pipeline batches). Modular FLUX has no guider: one call per step.
MODULAR_SDXL = ModelAdapter(
    family="modular-sdxl", denoiser_attr="unet", cfg_layout="sequential", modular=True, guiders=("guider",)
)
MODULAR_WAN = replace(WAN, family="modular-wan", modular=True, guiders=("guider", "guider_2"))
MODULAR_SD3 = replace(SD3, family="modular-sd3", cfg_layout="sequential", modular=True, guiders=("guider",))
MODULAR_FLUX = replace(FLUX, family="modular-flux", modular=True)
MODULAR_LTX = replace(MODULAR_SDXL, family="modular-ltx", denoiser_attr="transformer")
MODULAR_QWEN_IMAGE = replace(QWEN_IMAGE, family="modular-qwen-image", modular=True, guiders=("guider",))

# The diffusers release this table was made against: there the classified names and the exported
# names must be equal; on other releases every exported name must still be classified.
CLASSIFIED_FOR = "0.42.1"

SUPPORTED_STATUS, REFUSED_STATUS, NOT_APPLICABLE_STATUS = "supported", "refused", "not applicable"


@dataclass(frozen=True)
class Supported:
    """A tested class: the adapter it runs with and the ``tests/families.py`` case that shows it."""

    adapter: ModelAdapter
    case: str


@dataclass(frozen=True)
class Verdict:
    """What crossgate says about one pipeline class (``classify``)."""

    name: str  # the diffusers class the verdict is for (the user class's nearest diffusers ancestor)
    status: str  # SUPPORTED_STATUS | REFUSED_STATUS | NOT_APPLICABLE_STATUS
    reason: str  # why it is refused / not applicable; the tested case for a supported class
    adapter: ModelAdapter | None = None
    sequential: bool = False  # in the sequential-CFG family
    untested: bool = False  # refused only for being untested: allow_untested() may admit it


def _sd(case: str) -> Supported:
    return Supported(UNET, case)


def _dit(case: str) -> Supported:
    return Supported(TRANSFORMER, case)


SUPPORTED: dict[str, Supported] = {
    "StableDiffusionPipeline": _sd("SD 1.x/2.x"),
    "StableDiffusionXLPipeline": _sd("SDXL"),
    "PixArtAlphaPipeline": _dit("PixArt-Alpha"),
    "PixArtSigmaPipeline": _dit("PixArt-Sigma"),
    "SanaPipeline": _dit("Sana"),
    "LatentConsistencyModelPipeline": _sd("LCM (SD UNet)"),
    "StableDiffusionImg2ImgPipeline": _sd("SD img2img"),
    "StableDiffusionXLImg2ImgPipeline": _sd("SDXL img2img"),
    "StableDiffusionInpaintPipeline": _sd("SD inpainting"),
    "StableDiffusionXLInpaintPipeline": _sd("SDXL inpainting"),
    "StableDiffusionControlNetPipeline": _sd("SD ControlNet"),
    "StableDiffusionXLControlNetPipeline": _sd("SDXL ControlNet"),
    "StableVideoDiffusionPipeline": Supported(SVD, "Stable Video Diffusion"),
    "LTXPipeline": _dit("LTX-Video"),
    "AnimateDiffPipeline": _sd("AnimateDiff"),
    "AnimateDiffVideoToVideoPipeline": _sd("AnimateDiff video-to-video"),
    "TextToVideoSDPipeline": _sd("Text-to-video (UNet3D)"),
    "StableDiffusionAdapterPipeline": _sd("SD T2I-Adapter"),
    "StableDiffusionControlNetImg2ImgPipeline": _sd("SD ControlNet img2img"),
    "StableDiffusionControlNetInpaintPipeline": _sd("SD ControlNet inpainting"),
    "StableDiffusionXLControlNetImg2ImgPipeline": _sd("SDXL ControlNet img2img"),
    "StableDiffusionXLControlNetInpaintPipeline": _sd("SDXL ControlNet inpainting"),
    "StableDiffusionXLControlNetUnionPipeline": _sd("SDXL ControlNet-Union"),
    "StableDiffusionControlNetXSPipeline": _sd("SD ControlNet-XS"),
    "LatentConsistencyModelImg2ImgPipeline": _sd("LCM img2img"),
    "StableDiffusionGLIGENPipeline": _sd("GLIGEN"),
    "StableDiffusionUpscalePipeline": _sd("SD x4 upscaler"),
    "Kandinsky3Pipeline": _sd("Kandinsky 3"),
    "I2VGenXLPipeline": _sd("I2VGen-XL"),
    "LattePipeline": _dit("Latte"),
    "HunyuanDiTPipeline": _dit("HunyuanDiT"),
    "SanaSprintPipeline": Supported(SANA_SPRINT, "Sana Sprint"),
    "LuminaPipeline": Supported(LUMINA, "Lumina-Next"),
    "Kandinsky3Img2ImgPipeline": _sd("Kandinsky 3 img2img"),
    "StableDiffusionLatentUpscalePipeline": _sd("SD x2 latent upscaler"),
    "AnimateDiffSDXLPipeline": _sd("AnimateDiff SDXL"),
    "VideoToVideoSDPipeline": _sd("Video-to-video (UNet3D)"),
    "StableDiffusionXLAdapterPipeline": _sd("SDXL T2I-Adapter"),
    "StableDiffusionXLControlNetXSPipeline": _sd("SDXL ControlNet-XS"),
    "KolorsPipeline": _sd("Kolors"),
    "KolorsImg2ImgPipeline": _sd("Kolors img2img"),
    "AllegroPipeline": _dit("Allegro"),
    "SanaVideoPipeline": _dit("Sana Video"),
    "StableDiffusionPanoramaPipeline": Supported(PANORAMA, "SD Panorama"),
    "StableDiffusion3Pipeline": Supported(SD3, "SD3"),
    "StableDiffusion3Img2ImgPipeline": Supported(SD3, "SD3 img2img"),
    "StableDiffusion3InpaintPipeline": Supported(SD3, "SD3 inpainting"),
    "StableDiffusion3ControlNetPipeline": Supported(SD3_CONTROLNET, "SD3 ControlNet"),
    "FluxPipeline": Supported(FLUX, "FLUX.1"),
    "FluxImg2ImgPipeline": Supported(FLUX_UNNAMED, "FLUX.1 img2img"),
    "FluxInpaintPipeline": Supported(FLUX_UNNAMED, "FLUX.1 inpainting"),
    "FluxKontextPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Kontext"),
    "FluxKontextInpaintPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Kontext inpainting"),
    "FluxControlNetPipeline": Supported(FLUX_UNNAMED, "FLUX.1 ControlNet"),
    "FluxControlNetImg2ImgPipeline": Supported(FLUX_UNNAMED, "FLUX.1 ControlNet img2img"),
    "FluxControlNetInpaintPipeline": Supported(FLUX_UNNAMED, "FLUX.1 ControlNet inpainting"),
    "FluxFillPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Fill"),
    "FluxControlPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Control"),
    "FluxControlImg2ImgPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Control img2img"),
    "FluxControlInpaintPipeline": Supported(FLUX_UNNAMED, "FLUX.1 Control inpainting"),
    "ChromaPipeline": Supported(CHROMA, "Chroma"),
    "ChromaImg2ImgPipeline": Supported(CHROMA, "Chroma img2img"),
    "QwenImagePipeline": Supported(QWEN_IMAGE, "Qwen-Image"),
    "QwenImageImg2ImgPipeline": Supported(QWEN_IMAGE, "Qwen-Image img2img"),
    "QwenImageInpaintPipeline": Supported(QWEN_IMAGE, "Qwen-Image inpainting"),
    "QwenImageControlNetPipeline": Supported(QWEN_IMAGE, "Qwen-Image ControlNet"),
    "QwenImageEditPipeline": Supported(QWEN_IMAGE, "Qwen-Image Edit"),
    "QwenImageEditPlusPipeline": Supported(QWEN_IMAGE, "Qwen-Image Edit Plus, two images"),
    "QwenImageEditInpaintPipeline": Supported(QWEN_IMAGE, "Qwen-Image Edit inpainting"),
    "HunyuanVideoPipeline": Supported(HUNYUAN_VIDEO, "HunyuanVideo"),
    "AuraFlowPipeline": Supported(AURAFLOW, "AuraFlow"),
    "CogVideoXPipeline": Supported(COGVIDEOX, "CogVideoX"),
    "CogView4Pipeline": Supported(COGVIEW4, "CogView4"),
    "Lumina2Pipeline": Supported(LUMINA2, "Lumina2"),
    "ZImagePipeline": Supported(Z_IMAGE, "Z-Image"),
    "ZImageImg2ImgPipeline": Supported(Z_IMAGE, "Z-Image img2img"),
    "ZImageInpaintPipeline": Supported(Z_IMAGE, "Z-Image inpainting"),
    "HiDreamImagePipeline": Supported(HIDREAM, "HiDream"),
    "CogVideoXVideoToVideoPipeline": Supported(COGVIDEOX, "CogVideoX video-to-video"),
}

# Per-branch CFG with cross-attention (Wan's family). Status and reason: adapters/sequential.py.
SEQUENTIAL_CFG: tuple[str, ...] = (
    "WanPipeline",
    "WanImageToVideoPipeline",
    "WanVACEPipeline",
    "WanAnimatePipeline",
    "WanVideoToVideoPipeline",
    "LucyEditPipeline",
    "ChronoEditPipeline",
    "SkyReelsV2Pipeline",
    "SkyReelsV2ImageToVideoPipeline",
    "SkyReelsV2DiffusionForcingPipeline",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
    "HeliosPipeline",
    "HeliosPyramidPipeline",
    "CosmosTextToWorldPipeline",
    "CosmosVideoToWorldPipeline",
    "Cosmos2TextToImagePipeline",
    "Cosmos2VideoToWorldPipeline",
    "Cosmos2_5_PredictBasePipeline",
    "Cosmos2_5_TransferPipeline",
)

_UNTESTED = (
    "has cross-attention and batches CFG as [uncond; cond], so the generic rule would apply, but no "
    "test has run it; crossgate refuses classes it has not run (to try it anyway: "
    "crossgate.adapters.support.allow_untested(type(pipe)))."
)


def _untested(what: str) -> str:
    """``what`` (a sentence about the class), then why it is refused: untested (allow_untested admits it)."""
    return f"{what}. Its denoising loop {_UNTESTED}"


_PAG = (
    "perturbed-attention guidance batches up to three branches [uncond, cond, perturbed] and swaps "
    "self-attention processors per branch; crossgate's gate halves a two-branch [uncond; cond] batch, "
    "so it would feed the denoiser a mixed batch and fail mid-call. Use the pipeline without PAG "
    "(e.g. StableDiffusionPipeline for StableDiffusionPAGPipeline)."
)
_THREE_WAY = (
    "batches three guidance branches [text+image, image only, unconditional] (image and text guidance); "
    "crossgate's gate halves a two-branch [uncond; cond] batch, so it would fail mid-call."
)
_COMBINED = (
    "runs a prior pipeline (`prior_pipe`) and then a decoder pipeline (`decoder_pipe`), and neither can be "
    "gated: the prior (a Kandinsky prior pipeline) has no `unet` or `transformer` with cross-attention, and "
    "the decoder (a Kandinsky 2.x pipeline) is refused for its added-KV attention (see "
    "KandinskyV22Pipeline). For TGATE on Kandinsky use Kandinsky3Pipeline (supported)."
)
_NO_PROGRESS_BAR = (
    "runs its denoising loop without `self.progress_bar`, which is how crossgate learns a call's steps."
)
_ADDED_KV = (
    "uses added-KV attention (`SimpleCrossAttn` blocks, `AttnAddedKVProcessor`): each conditioning "
    "layer attends to [conditioning tokens; latent tokens] at once, so caching it would freeze "
    "self-attention too, which is not TGATE."
)
_UNRECOGNISED = (
    "conditions on text through cross-attention modules of its own class, which crossgate does not "
    "recognise as cross-attention (no diffusers `Attention` with `is_cross_attention` / `attn2`); it "
    "needs an adapter."
)

REFUSED: dict[str, str] = {
    "ChromaInpaintPipeline": (
        "reads `self.transformer.config.guidance_embeds`, which ChromaTransformer2DModel's config does not "
        "have, so in diffusers 0.42.1 its __call__ fails with AttributeError before the first step, with "
        "or without crossgate; crossgate gates ChromaPipeline and ChromaImg2ImgPipeline."
    ),
    **dict.fromkeys(
        ("ZImageControlNetPipeline", "ZImageControlNetInpaintPipeline"),
        "runs a ZImageControlNetModel beside the transformer at every step and adds its residuals to the "
        "whole unified [image; text] sequence after the layers it names (`controlnet_block_samples`); "
        "crossgate's Z-Image gating has not been run with it (untested, not one of the tested Z-Image "
        "pipelines: ZImagePipeline, ZImageImg2ImgPipeline, ZImageInpaintPipeline).",
    ),
    "ZImageOmniPipeline": (
        "calls its transformer in omni mode: one list of images per sample, SigLIP image tokens and a "
        "sequence ordered [text; image; SigLIP] with per-token modulation (`noise_mask`); crossgate's Z-Image "
        "gating knows the basic mode only ([image; text], one modulation), so it would freeze the wrong rows."
    ),
    **dict.fromkeys(
        (
            "AnimateDiffPAGPipeline",
            "HunyuanDiTPAGPipeline",
            "KolorsPAGPipeline",
            "PixArtSigmaPAGPipeline",
            "SanaPAGPipeline",
            "StableDiffusionPAGPipeline",
            "StableDiffusionPAGImg2ImgPipeline",
            "StableDiffusionPAGInpaintPipeline",
            "StableDiffusionControlNetPAGPipeline",
            "StableDiffusionControlNetPAGInpaintPipeline",
            "StableDiffusionXLPAGPipeline",
            "StableDiffusionXLPAGImg2ImgPipeline",
            "StableDiffusionXLPAGInpaintPipeline",
            "StableDiffusionXLControlNetPAGPipeline",
            "StableDiffusionXLControlNetPAGImg2ImgPipeline",
        ),
        _PAG,
    ),
    **dict.fromkeys(
        ("StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLInstructPix2PixPipeline"),
        _THREE_WAY,
    ),
    "DreamLitePipeline": (
        "batches three guidance branches [uncond, image only, text+image] in edit mode (an `image` is "
        "passed: `torch.cat([latents] * 3)`); its text-to-image mode batches [uncond; cond] but is "
        "untested. The mode is picked per call, after `apply()`, so the class is refused as a whole: "
        "crossgate's gate halves a two-branch batch and an edit call would fail mid-call."
    ),
    **dict.fromkeys(
        (
            "KandinskyCombinedPipeline",
            "KandinskyImg2ImgCombinedPipeline",
            "KandinskyInpaintCombinedPipeline",
            "KandinskyV22CombinedPipeline",
            "KandinskyV22Img2ImgCombinedPipeline",
            "KandinskyV22InpaintCombinedPipeline",
        ),
        _COMBINED,
    ),
    **dict.fromkeys(("TextToVideoZeroPipeline", "TextToVideoZeroSDXLPipeline"), _NO_PROGRESS_BAR),
    **dict.fromkeys(
        (
            "IFPipeline",
            "IFImg2ImgPipeline",
            "IFInpaintingPipeline",
            "IFSuperResolutionPipeline",
            "IFImg2ImgSuperResolutionPipeline",
            "IFInpaintingSuperResolutionPipeline",
            "KandinskyPipeline",
            "KandinskyImg2ImgPipeline",
            "KandinskyInpaintPipeline",
            "KandinskyV22Pipeline",
            "KandinskyV22Img2ImgPipeline",
            "KandinskyV22InpaintPipeline",
            "KandinskyV22ControlnetPipeline",
            "KandinskyV22ControlnetImg2ImgPipeline",
        ),
        _ADDED_KV,
    ),
    **dict.fromkeys(
        (
            "Kandinsky5T2VPipeline",
            "Kandinsky5I2VPipeline",
            "Kandinsky5T2IPipeline",
            "Kandinsky5I2IPipeline",
            "Kandinsky6TI2VAPipeline",
            "StableAudio3Pipeline",
            "StableAudio3AudioToAudioPipeline",
            "StableAudio3InpaintPipeline",
            "SanaWMPipeline",
            "MotifVideoPipeline",
            "MotifVideoImage2VideoPipeline",
            "LongCatAudioDiTPipeline",
            "BriaFibo2Pipeline",
        ),
        _UNRECOGNISED,
    ),
    **dict.fromkeys(
        ("LEditsPPPipelineStableDiffusion", "LEditsPPPipelineStableDiffusionXL"),
        "batches the unconditional branch with one branch per editing prompt "
        "(`torch.cat([latents] * (1 + self.enabled_editing_prompts))`), not the two [uncond; cond] halves "
        "crossgate's gate splits, and its edit masks read each step's cross-attention maps "
        "(`LeditsAttentionStore`); it would fail mid-call.",
    ),
    "StableDiffusionPipelineSafe": (
        "(Safe Latent Diffusion) batches three branches [uncond, cond, safety concept] while its safety "
        "guidance is on (`sld_guidance_scale` > 1, default 1000: `torch.cat([latents] * (3 if "
        "enable_safety_guidance else 2))`); crossgate's gate halves a two-branch [uncond; cond] batch, so "
        "it would fail mid-call, and whether safety guidance runs is decided per call, after `apply()`."
    ),
    "StableDiffusionInpaintPipelineLegacy": _untested(
        "is deprecated by diffusers, which says StableDiffusionInpaintPipeline (supported) does exactly "
        "the same: use that"
    ),
    "SanaWMLTX2Refiner": (
        "(SANA-WM's stage-2 refiner) refines the video block by block with a key/value cache carried "
        "across blocks: its progress bar counts blocks (`total=num_blocks`), each block runs its own "
        "few-step Euler schedule from the top plus an extra transformer pass to capture the cache, and "
        "there is no CFG to drop; crossgate's gate counts the steps of one denoising schedule."
    ),
    "VersatileDiffusionPipeline": (
        "runs each task through a temporary pipeline it builds per call "
        "(`VersatileDiffusionTextToImagePipeline(**components)`, ...), whose loop crossgate never sees; "
        "and the task pipelines are refused (their denoiser is `image_unet`, rebuilt per task)."
    ),
    "VersatileDiffusionTextToImagePipeline": (
        "names its denoiser `image_unet` (crossgate gates `unet` or `transformer`), and at construction swaps "
        "the attention blocks of `image_unet` and `text_unet` (`_swap_unet_attention_blocks`), so the "
        "modules that attend to the prompt are the text UNet's, moved in; no adapter or test covers that "
        "layout."
    ),
    "VersatileDiffusionDualGuidedPipeline": (
        "names its denoiser `image_unet` (crossgate gates `unet` or `transformer`) and replaces its "
        "transformer blocks with `DualTransformer2DModel`, which runs a text and an image cross-attention "
        "path side by side and mixes their outputs (`mix_ratio`); caching that mixture is not TGATE's "
        "per-module cache, and no adapter or test covers it."
    ),
    "VersatileDiffusionImageVariationPipeline": (
        "names its denoiser `image_unet` (crossgate gates `unet` or `transformer`) and conditions it on "
        "image embeddings, not text; no adapter or test covers it."
    ),
    "StableDiffusionSAGPipeline": (
        "self-attention guidance runs a second, degraded denoiser pass per step built from the first "
        "pass's self-attention maps; crossgate's step and batch bookkeeping assume one pass."
    ),
    "StableDiffusionAttendAndExcitePipeline": (
        "optimises the latents with gradient steps through extra denoiser passes inside each step; "
        "crossgate would count and cache those passes as the step's."
    ),
    "StableDiffusionPix2PixZeroPipeline": (
        "runs an extra denoiser pass per step with gradients (cross-attention guidance on the latents); "
        "crossgate's cache would hold that pass's attention."
    ),
    "StableDiffusionGLIGENTextImagePipeline": (
        "calls the denoiser twice per step (with and without the grounding tokens) and blends them; "
        "crossgate's gate assumes one pass per step."
    ),
    "StableDiffusionParadigmsPipeline": (
        "denoises many timesteps in one batched pass (parallel sampling), so a batch is not a "
        "[uncond; cond] pair of one step."
    ),
    "SemanticStableDiffusionPipeline": (
        "batches the prompt, the negative prompt and every editing concept (SEGA), more than the two "
        "branches crossgate's gate splits."
    ),
    "CycleDiffusionPipeline": (
        "batches four branches per step (source and target, each uncond and cond, interleaved), not the "
        "[uncond; cond] halves crossgate's gate splits."
    ),
    "StableDiffusionDiffEditPipeline": _untested(
        "edits through latents inverted by its own loop (`invert()`) and a mask computed by extra "
        "denoiser passes (`generate_mask()`), both run before the editing call"
    ),
    "AudioLDMPipeline": (
        "calls its UNet with `encoder_hidden_states=None` (the text enters as class labels), so its "
        "`attn2` layers attend to the latents themselves: they are self-attention, not TGATE's target."
    ),
    "MusicLDMPipeline": (
        "calls its UNet with `encoder_hidden_states=None` (the text enters as class labels), so its "
        "`attn2` layers attend to the latents themselves: they are self-attention, not TGATE's target."
    ),
    "AceStepPipeline": (
        "applies guidance only inside a timestep interval, through adaptive projected guidance "
        "(norm-thresholded), and may add a cover-strength pass; crossgate's gate assumes plain CFG."
    ),
    **dict.fromkeys(
        (
            "LTX2Pipeline",
            "LTX2ImageToVideoPipeline",
            "LTX2ConditionPipeline",
            "LTX2HDRPipeline",
            "LTX2InContextPipeline",
        ),
        "adds spatio-temporal and modality guidance passes (`uncond_stg`, `uncond_modality`) to the "
        "batched CFG pass; crossgate's gate assumes one [uncond; cond] pass per step.",
    ),
    **dict.fromkeys(
        ("MarigoldDepthPipeline", "MarigoldNormalsPipeline", "MarigoldIntrinsicsPipeline"),
        "has no prompt (its cross-attention attends to a fixed empty-text embedding) and no CFG to drop, "
        "so TGATE saves only that fixed attention; untested, refused.",
    ),
    **dict.fromkeys(
        (
            "AltDiffusionPipeline",
            "AltDiffusionImg2ImgPipeline",
            "AmusedPipeline",
            "AmusedImg2ImgPipeline",
            "AmusedInpaintPipeline",
            "AnimateDiffControlNetPipeline",
            "AnimateDiffSparseControlNetPipeline",
            "AnimateDiffVideoToVideoControlNetPipeline",
            "AnyFlowPipeline",
            "AnyFlowFARPipeline",
            "AudioLDM2Pipeline",
            "BlipDiffusionPipeline",
            "BlipDiffusionControlNetPipeline",
            "DreamLiteMobilePipeline",
            "HunyuanDiTControlNetPipeline",
            "LDMTextToImagePipeline",
            "LTX2DFRPipeline",
            "LTX2DFRTemporalRefinePipeline",
            "LTXConditionPipeline",
            "LTXImageToVideoPipeline",
            "LTXI2VLongMultiPromptPipeline",
            "PIAPipeline",
            "PaintByExamplePipeline",
            "SanaControlNetPipeline",
            "SanaImageToVideoPipeline",
            "SanaSprintImg2ImgPipeline",
            "StableAudioPipeline",
            "StableDiffusionDepth2ImgPipeline",
            "StableDiffusionImageVariationPipeline",
            "StableDiffusionLDM3DPipeline",
            "StableDiffusionModelEditingPipeline",
            "StableDiffusionXLControlNetUnionImg2ImgPipeline",
            "StableDiffusionXLControlNetUnionInpaintPipeline",
            "StableUnCLIPPipeline",
            "StableUnCLIPImg2ImgPipeline",
            "VQDiffusionPipeline",
        ),
        _UNTESTED,
    ),
}
# Refused only for want of a test: allow_untested() may admit these (and user subclasses).
UNTESTED: frozenset[str] = frozenset(name for name, reason in REFUSED.items() if reason.endswith(_UNTESTED))

_JOINT = (
    "has no cross-attention layers: text and latent tokens share one joint (MMDiT / single-stream) "
    "attention. crossgate's joint-attention TGATE (freeze the text stream, drop CFG; crossgate.joint) "
    "knows the joint blocks of SD3, FLUX.1, Chroma, AuraFlow, Qwen-Image, HunyuanVideo, CogVideoX, CogView4, "
    "Lumina2, Z-Image and HiDream with "
    "their stock "
    "processors, "
    "and the pipelines tested end to end with them; this class is not one of those."
)
_UNCONDITIONAL = (
    "is not text-conditioned (its denoiser has no cross-attention: unconditional or class-conditional), "
    "so TGATE has nothing to cache."
)
_NO_DENOISER = (
    "has no `unet` or `transformer` denoiser with cross-attention for crossgate to gate (a prior, "
    "an upsampler, a decoder-only or language-model pipeline, or denoisers under other names)."
)

NOT_APPLICABLE: dict[str, str] = {
    **dict.fromkeys(
        (
            "BriaPipeline",
            "BriaFiboPipeline",
            "BriaFiboEditPipeline",
            "CogVideoXImageToVideoPipeline",
            "CogVideoXFunControlPipeline",
            "CogView3PlusPipeline",
            "CogView4ControlPipeline",
            "ConsisIDPipeline",
            "Cosmos3OmniPipeline",
            "EasyAnimatePipeline",
            "EasyAnimateControlPipeline",
            "EasyAnimateInpaintPipeline",
            "ErnieImagePipeline",
            "Flux2Pipeline",
            "Flux2KleinPipeline",
            "Flux2KleinInpaintPipeline",
            "Flux2KleinKVPipeline",
            "GlmImagePipeline",
            "HunyuanImagePipeline",
            "HunyuanImageRefinerPipeline",
            "HunyuanVideoImageToVideoPipeline",
            "HunyuanSkyreelsImageToVideoPipeline",
            "HunyuanVideoFramepackPipeline",
            "HunyuanVideo15Pipeline",
            "HunyuanVideo15ImageToVideoPipeline",
            "Ideogram4Pipeline",
            "JoyImageEditPipeline",
            "JoyImageEditPlusPipeline",
            "Kandinsky6SRPipeline",
            "Krea2Pipeline",
            "LongCatImagePipeline",
            "LongCatImageEditPipeline",
            "MochiPipeline",
            "NucleusMoEImagePipeline",
            "OmniGenPipeline",
            "OvisImagePipeline",
            "QwenImageControlNetInpaintPipeline",
            "QwenImageLayeredPipeline",
            "QwenImage21Pipeline",
            "RFD4ProteinaPipeline",
            "StableDiffusion3ControlNetInpaintingPipeline",
            "StableDiffusion3PAGPipeline",
            "StableDiffusion3PAGImg2ImgPipeline",
            "UniDiffuserPipeline",
            "VisualClozePipeline",
            "VisualClozeGenerationPipeline",
        ),
        _JOINT,
    ),
    **dict.fromkeys(
        (
            "AudioDiffusionPipeline",
            "ConsistencyModelPipeline",
            "DDIMPipeline",
            "DDPMPipeline",
            "DanceDiffusionPipeline",
            "DiTPipeline",
            "KarrasVePipeline",
            "LDMPipeline",
            "LDMSuperResolutionPipeline",
            "PNDMPipeline",
            "RePaintPipeline",
            "ScoreSdeVePipeline",
        ),
        _UNCONDITIONAL,
    ),
    **dict.fromkeys(
        (
            "DiffusionGemmaPipeline",
            "FluxPriorReduxPipeline",
            "KandinskyPriorPipeline",
            "KandinskyV22PriorPipeline",
            "KandinskyV22PriorEmb2EmbPipeline",
            "LLaDA2Pipeline",
            "LTXLatentUpsamplePipeline",
            "LTX2LatentUpsamplePipeline",
            "LTX2VideoDiffusionDecodePipeline",
            "ShapEPipeline",
            "ShapEImg2ImgPipeline",
            "SpectrogramDiffusionPipeline",
            "StableCascadePriorPipeline",
            "StableCascadeDecoderPipeline",
            "StableCascadeCombinedPipeline",
            "UnCLIPPipeline",
            "UnCLIPImageVariationPipeline",
            "WuerstchenPriorPipeline",
            "WuerstchenDecoderPipeline",
            "WuerstchenCombinedPipeline",
        ),
        _NO_DENOISER,
    ),
    **dict.fromkeys(
        (
            "OnnxStableDiffusionPipeline",
            "OnnxStableDiffusionImg2ImgPipeline",
            "OnnxStableDiffusionInpaintPipeline",
            "OnnxStableDiffusionUpscalePipeline",
            "StableDiffusionOnnxPipeline",
        ),
        "runs its models in ONNX Runtime: there is no torch denoiser for crossgate's hooks.",
    ),
    **dict.fromkeys(
        ("PRXPipeline", "PRXPixelPipeline"),
        "has no cross-attention layers: its attention (`PRXAttnProcessor2_0`) concatenates the text and "
        "image keys and values (`torch.cat((txt_k, img_k))`), so the image tokens attend to text and image "
        "at once (joint attention) and there is no cross-attention output for TGATE to cache.",
    ),
    "DiffusionPipeline": (
        "is the base class; `DiffusionPipeline.from_pretrained` returns the concrete pipeline class, and "
        "that class is what crossgate classifies."
    ),
}

# Modular pipelines (``ModularPipeline`` and its subclasses): those listed in
# crossgate.adapters.modular are supported (tests/test_modular.py); the others are refused by rule.
MODULAR_REFUSAL = (
    "is a modular pipeline crossgate has not tested: crossgate follows a modular pipeline's denoise "
    "loop block and its guider's unnamed cond/uncond calls only where tests/test_modular.py runs it "
    "(see the support matrix); use the classic pipeline class."
)
# Tested modular classes (tests/test_modular.py), and their adapters.
MODULAR: dict[str, ModelAdapter] = {
    "StableDiffusionXLModularPipeline": MODULAR_SDXL,
    "WanModularPipeline": MODULAR_WAN,
    "Wan22ModularPipeline": MODULAR_WAN,
    "StableDiffusion3ModularPipeline": MODULAR_SD3,
    "FluxModularPipeline": MODULAR_FLUX,
    "QwenImageModularPipeline": MODULAR_QWEN_IMAGE,
    "WanImage2VideoModularPipeline": MODULAR_WAN,
    "LTXModularPipeline": MODULAR_LTX,
    "FluxKontextModularPipeline": MODULAR_FLUX,
}
_MODULAR_BASE = "ModularPipeline"
_BASES = ("DiffusionPipeline", _MODULAR_BASE)

_ALLOWED: set[type] = set()


def allow_untested(pipeline_cls: type) -> type:
    """Vouch for ``pipeline_cls``: let ``crossgate.apply`` gate it although no test has run it.

    For a user subclass that overrides ``__call__`` (of a supported class, or of an untested one), a
    custom pipeline deriving from ``DiffusionPipeline``, or a diffusers class refused only for being
    untested. The checks ``apply`` makes before the call still apply (denoiser, cross-attention,
    per-branch calls, a ``__call__`` that batches more than two guidance branches). Classes refused for
    a cause (a structural one: the opt-in cannot make them work) or not applicable stay refused.
    Returns the class (usable as a decorator).
    """
    verdict = classify(pipeline_cls)
    if verdict is None:
        raise TypeError(f"{pipeline_cls!r} is not a diffusers pipeline class.")
    if verdict.status != SUPPORTED_STATUS and not verdict.untested:
        from crossgate.adapters.base import UnsupportedPipelineError

        raise UnsupportedPipelineError(f"{pipeline_cls.__name__} cannot be allowed: {verdict.reason}")
    _ALLOWED.add(pipeline_cls)
    return pipeline_cls


def is_allowed(pipeline_cls: type) -> bool:
    """Whether :func:`allow_untested` was called for ``pipeline_cls`` or a class it derives from."""
    return any(cls in _ALLOWED for cls in pipeline_cls.__mro__)


def _is_diffusers(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "diffusers" or module.startswith("diffusers.")


def _is_pipeline_class(cls: type) -> bool:
    """A diffusers pipeline class: a ``DiffusionPipeline`` / ``ModularPipeline`` subclass, whatever its
    name, or a placeholder diffusers exports for a pipeline whose backend is missing (named ``*Pipeline``).

    Not the mixins a pipeline's MRO also holds (``StableDiffusionMixin``, ``FromSingleFileMixin``, ...).
    """
    if not _is_diffusers(cls):
        return False
    if cls.__name__.endswith("Pipeline"):
        return True
    return any(c.__name__ in _BASES and _is_diffusers(c) for c in getattr(cls, "__mro__", ()))


def diffusers_ancestor(pipeline_cls: type) -> type | None:
    """The nearest diffusers pipeline class in ``pipeline_cls``'s MRO (itself for a diffusers class).

    Community pipelines live in ``diffusers_modules``, not ``diffusers``, so they resolve to the
    diffusers class they derive from, as user subclasses do.
    """
    for cls in getattr(pipeline_cls, "__mro__", ()):
        if _is_pipeline_class(cls):
            return cls
    return None


def exported_pipelines() -> dict[str, type]:
    """Every pipeline class the installed diffusers exports, by name: what the classification covers.

    Found by what each exported name is, not by its spelling (``LEditsPPPipelineStableDiffusion``,
    ``StableDiffusionPipelineSafe`` and ``SanaWMLTX2Refiner`` do not end in "Pipeline"). Imports every
    exported name (seconds): for tests and the README matrix, never for ``apply``.
    """
    import diffusers

    found: dict[str, type] = {}
    for name in dir(diffusers):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(diffusers, name)
        except Exception:  # an optional backend's name that fails to import is not a class we could get
            if name.endswith("Pipeline"):
                raise
            continue
        if isinstance(obj, type) and obj.__name__ == name and _is_pipeline_class(obj):
            found[name] = obj
    return dict(sorted(found.items()))


def classify(pipeline_cls: type) -> Verdict | None:
    """crossgate's verdict on ``pipeline_cls``; None when it is not a diffusers pipeline at all."""
    base = diffusers_ancestor(pipeline_cls)
    if base is None:
        return None
    name = base.__name__
    own = pipeline_cls is base
    if name in SUPPORTED:
        return Verdict(name, SUPPORTED_STATUS, SUPPORTED[name].case, SUPPORTED[name].adapter)
    if name in SEQUENTIAL_CFG:
        adapter = SEQUENTIAL_ADAPTERS.get(name)
        if adapter is not None:
            return Verdict(name, SUPPORTED_STATUS, "tests/test_sequential.py", adapter, sequential=True)
        return Verdict(name, REFUSED_STATUS, per_branch_refusal(base), sequential=True)
    if name in REFUSED:
        return Verdict(name, REFUSED_STATUS, REFUSED[name], untested=name in UNTESTED)
    if name in _BASES and not own:
        return Verdict(
            name,
            REFUSED_STATUS,
            f"is a custom pipeline deriving from {name} directly, which crossgate has not classified; "
            "if its loop batches CFG as [uncond; cond] and ticks `self.progress_bar`, vouch for it with "
            "crossgate.adapters.support.allow_untested(type(pipe)).",
            untested=name != _MODULAR_BASE,
        )
    if name in NOT_APPLICABLE:
        return Verdict(name, NOT_APPLICABLE_STATUS, NOT_APPLICABLE[name])
    if name == _MODULAR_BASE or any(c.__name__ == _MODULAR_BASE and _is_diffusers(c) for c in base.__mro__):
        adapter = MODULAR.get(name)
        if adapter is not None:
            return Verdict(name, SUPPORTED_STATUS, "tests/test_modular.py", adapter)
        return Verdict(name, REFUSED_STATUS, MODULAR_REFUSAL)
    return Verdict(
        name,
        REFUSED_STATUS,
        "is not in crossgate's classification of diffusers pipelines (made for diffusers "
        f"{CLASSIFIED_FOR}); a newer diffusers may have added it. crossgate refuses pipelines it has not "
        "classified; to try it anyway: crossgate.adapters.support.allow_untested(type(pipe)).",
        untested=True,
    )


def overrides_call(pipeline_cls: type) -> bool:
    """Whether a class between ``pipeline_cls`` and its classified diffusers ancestor defines ``__call__``."""
    base = diffusers_ancestor(pipeline_cls)
    if base is None:
        return False
    mro = pipeline_cls.__mro__
    return any("__call__" in vars(cls) for cls in mro[: mro.index(base)])


def refusal(pipeline_cls: type, verdict: Verdict) -> str:
    """The message ``apply`` raises for a class ``verdict`` does not support."""
    name = pipeline_cls.__name__
    subject = name if name == verdict.name else f"{name} (a {verdict.name} subclass)"
    reason = verdict.reason
    if reason.startswith(verdict.name + " "):  # per_branch_refusal names the class itself
        reason = reason[len(verdict.name) + 1 :]
    return f"crossgate: {subject} {reason}"
