// The Python GIL, for the few places where C++ code of this library saves torch from taking it many times over.
#pragma once

namespace sgdf_erd {

// Holds the GIL for its lifetime (taken and given back as PyGILState_Ensure / PyGILState_Release do: nested holds
// are fine, on any thread). Does nothing where the interpreter is not running. Defined in python_gil.cpp, the one
// file of the kernels that includes Python.h.
class ScopedGil {
 public:
  ScopedGil() noexcept;
  ~ScopedGil();
  ScopedGil(const ScopedGil&) = delete;
  ScopedGil& operator=(const ScopedGil&) = delete;

 private:
  int state_ = 0;  // PyGILState_STATE
  bool held_ = false;
};

}  // namespace sgdf_erd
