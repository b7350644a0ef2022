// Model configurations built in, for runs that need a model's shape but no checkpoint
// (`trident bench e2e`): DeepSeek-V3 as its published config.json gives it, and the shipped small
// model's shape (models/trident-tiny-fp8) for quick runs on the CPU.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace trident {

// "deepseek-v3", "tiny".
std::vector<std::string> preset_names();
// The named preset; an unknown name is refused with the list.
ModelConfig preset_config(const std::string& name);

}  // namespace trident
