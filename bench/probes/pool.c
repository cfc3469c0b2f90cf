/* Link probe: pools (rp_config_init, rp_config_validate, rp_pool_create,
 * rp_pool_destroy). Built by bench/Makefile; linking is the test, it is
 * never run. */
#include "rpool.h"

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1000) {
        rp_config c;
        char err[64];
        rp_config_init(&c);
        rp_config_validate(&c, err, sizeof err);
        rp_pool_destroy(rp_pool_create(&c));
    }
    return 0;
}
