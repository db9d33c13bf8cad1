// SGDF_ERD_CHECK_TYPE: the wrong-type check (a TypeError in torch's convention) for kernels on the stable ABI.
// C++ can reach Python only as ValueError, IndexError or RuntimeError there (see common/stable.h), so the failure
// is a std::invalid_argument whose message starts with "TypeError: ", and python/sgdf_erd/_type_errors.py re-raises
// it as TypeError (the marker must match its PREFIX). Used by the ERD and NTK checks.
#pragma once

#include "common/stable.h"

#ifndef SGDF_ERD_CHECK_TYPE
#define SGDF_ERD_CHECK_TYPE(cond, ...) SGDF_ERD_CHECK_VALUE(cond, "TypeError: ", __VA_ARGS__)
#endif
