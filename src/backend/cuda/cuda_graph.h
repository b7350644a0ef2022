// CUDA graphs of the backend's ops: a capture on the device's stream, its workspace carved from
// the region DeviceContext sets aside (set_graph_workspace), and the instantiated graph replayed
// on the same stream.
#pragma once

#include <functional>
#include <memory>

#include "backend/backend.h"

namespace trident::cuda {

class DeviceContext;

// Records what `ops` launches on device.stream() as one graph, its tensors carved from graph
// workspace `workspace` (DeviceContext::add_graph_workspace); throws, leaving the stream as it
// was, when ops throws or issues something a capture cannot hold (a host synchronization).
std::unique_ptr<Graph> capture_graph(DeviceContext& device, int workspace,
                                     const std::function<void()>& ops);

}  // namespace trident::cuda
