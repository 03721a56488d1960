/* Prints llama.cpp's own report of the CPU features its kernels were built for
 * (llama_print_system_info, the "system_info:" line llama-cli and llama-server log at start).
 * llama-simple does not print it, and building llama-cli would add minutes of cross-compile. */
#include <stdio.h>
#include "llama.h"

int main(void) {
    llama_backend_init();
    printf("system_info: %s\n", llama_print_system_info());
    llama_backend_free();
    return 0;
}
