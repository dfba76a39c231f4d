// Placeholder until decode_trajectory lands.
#include <pybind11/pybind11.h>

namespace vla {
void bind_decode(pybind11::module_& m) { (void)m; }
}  // namespace vla
