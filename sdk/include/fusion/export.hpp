#pragma once
/// Symbol visibility for the SDK library and for plugins.
/// Everything is built with hidden visibility; FUSION_SDK_API marks what libfusion_sdk exports
/// (the interfaces' vtables and typeinfo, fusion::Error), FUSION_PLUGIN_EXPORT the one C entry of a plugin.
#if defined(FUSION_SDK_BUILDING)
#define FUSION_SDK_API __attribute__((visibility("default")))
#else
#define FUSION_SDK_API __attribute__((visibility("default")))
#endif
#define FUSION_PLUGIN_EXPORT __attribute__((visibility("default")))
