// The libstdc++ and glibc pieces newer than manylinux_2_28 that inline header code refers to, defined here so the
// library does not need them from the system (see manylinux_compat.h for the glibc functions). libstdc++ stays a
// shared library: exceptions thrown here cross into torch's frames (the op errors Python sees), so the exception
// runtime must be the one copy the process shares, never a static copy of our own. These are the same inline
// definitions the headers hold; the newer libstdc++ exports them as explicit instantiations, which GCC 8's lacks.
#include <new>
#include <sstream>
#include <string>

#if defined(__GLIBCXX__) && _GLIBCXX_RELEASE >= 11 && _GLIBCXX_USE_CXX11_ABI
// The default constructors split from the openmode ones (GLIBCXX_3.4.26), used by str_cat (common/stable.h) and by
// torch's stable headers for error messages, and C++20's ref-qualified str() (GLIBCXX_3.4.29). torch 2.11's build
// compiles as C++17 (the GPU machine's torch), later ones as C++20.
template std::basic_ostringstream<char>::basic_ostringstream();
template std::basic_stringstream<char>::basic_stringstream();
#if __cplusplus > 201703L
template std::string std::basic_stringbuf<char>::str() const&;
template std::string std::basic_stringbuf<char>::str() &&;
#endif

namespace std {
// GLIBCXX_3.4.29: std::allocator<T>::allocate calls it for an element count whose byte size overflows
void __throw_bad_array_new_length() { throw bad_array_new_length(); }
}  // namespace std
#endif

// GLIBC_2.32: libstdc++'s inline reference counting (shared_ptr, locale, COW strings; ext/atomicity.h) reads it to
// skip atomics while the process has a single thread. Ours is 0 ("maybe several threads") and nothing writes it, so
// this library always takes the atomic path: correct with any number of threads, and consistent with glibc's own
// flag that libstdc++.so reads. Never make it nonzero (a data race once threads exist). Hidden: binds only here;
// tests/test_native_load.py checks it stays a local .bss symbol.
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}
