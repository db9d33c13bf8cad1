#include "common/python_gil.h"

#include <Python.h>

namespace sgdf_erd {

ScopedGil::ScopedGil() noexcept : held_(Py_IsInitialized() != 0) {
  if (held_) state_ = static_cast<int>(PyGILState_Ensure());
}

ScopedGil::~ScopedGil() {
  if (held_) PyGILState_Release(static_cast<PyGILState_STATE>(state_));
}

}  // namespace sgdf_erd
