// vivace's torch operators (libvivace_ops.so): vivace::channelwise_tp and its backward, registered with the
// dispatcher when the library loads. Artifacts that call them (AOTInductor through its proxy executor,
// TorchScript through the dispatcher) need the library loaded: the core references kernels_version() so that
// every binary linking the core also loads the operators, once per process.
#pragma once

namespace vivace {

__attribute__((visibility("default"))) int kernels_version();

}  // namespace vivace
