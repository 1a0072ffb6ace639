{
  "targets": [
    {
      "target_name": "hsmint_native",
      "sources": ["native/hsmint_native.c"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
