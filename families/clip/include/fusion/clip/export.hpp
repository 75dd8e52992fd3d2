#pragma once
/// Symbol visibility of libfusion_clip. The tree builds with hidden visibility; FUSION_CLIP_API
/// marks what the library exports: the model classes (their vtables and typeinfo, so a
/// ClipVisionModel made in one plugin is the same type in every other), the configs, the tokenizer,
/// the zero-shot heads and the clip_vision pool. Everything else stays inside the library.
#define FUSION_CLIP_API __attribute__((visibility("default")))
