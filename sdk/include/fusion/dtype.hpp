#pragma once
// Names of tensor dtypes as users write them (config files, Hugging Face's config.json).
#include <ATen/ATen.h>

#include <string>

#include "fusion/export.hpp"

namespace fusion {

/// "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"
/// (Hugging Face's `torch_dtype` spelling). Throws fusion::Error for any other dtype: a name is
/// never guessed.
FUSION_SDK_API std::string dtype_name(at::ScalarType t);

/// The dtype called `name` (as dtype_name writes it). Throws fusion::Error naming `where` (an
/// option such as "run.dtype") and the name otherwise.
FUSION_SDK_API at::ScalarType parse_dtype(const std::string& name, const std::string& where);

}  // namespace fusion
