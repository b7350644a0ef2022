#include "backend/cuda/cuda_graph.h"

#include <exception>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

class CudaGraph final : public Graph {
 public:
  CudaGraph(DeviceContext& device, CUgraph graph, CUgraphExec exec)
      : device_(device), graph_(graph), exec_(exec) {}
  ~CudaGraph() override {
    cu().cuGraphExecDestroy(exec_);
    cu().cuGraphDestroy(graph_);
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void replay() override {
    device_.make_current();
    check(cu().cuGraphLaunch(exec_, device_.stream()),
          fmt::format("replaying a CUDA graph on device {}", device_.ordinal()));
  }

 private:
  DeviceContext& device_;
  CUgraph graph_;
  CUgraphExec exec_;
};

}  // namespace

std::unique_ptr<Graph> capture_graph(DeviceContext& device, int workspace,
                                     const std::function<void()>& ops) {
  device.make_current();
  const std::string where = fmt::format("capturing a CUDA graph on device {}", device.ordinal());
  device.begin_capture(workspace);
  // Thread-local mode: other threads' driver calls (another GPU's rank, a server thread) are not
  // the capture's business; this thread's unsafe calls fail instead of being recorded.
  CUresult begun = cu().cuStreamBeginCapture(device.stream(), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
  if (begun != CUDA_SUCCESS) {
    device.end_capture();
    check(begun, where);
  }
  CUgraph graph = nullptr;
  try {
    ops();
  } catch (const std::exception& e) {
    // Ends the (now invalid) capture so the stream takes eager work again.
    cu().cuStreamEndCapture(device.stream(), &graph);
    if (graph) cu().cuGraphDestroy(graph);
    device.end_capture();
    fail("{}: {}", where, e.what());
  }
  CUresult ended = cu().cuStreamEndCapture(device.stream(), &graph);
  device.end_capture();
  check(ended, where + " (an op synchronized with the host or used another stream)");
  CUgraphExec exec = nullptr;
  CUresult made = cu().cuGraphInstantiateWithFlags(&exec, graph, 0);
  if (made != CUDA_SUCCESS) {
    cu().cuGraphDestroy(graph);
    check(made, fmt::format("instantiating a CUDA graph on device {}", device.ordinal()));
  }
  return std::make_unique<CudaGraph>(device, graph, exec);
}

}  // namespace trident::cuda
