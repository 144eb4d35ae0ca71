// hiredis (Debian libhiredis-dev). RedisClient uses its RESP reader only: the socket
// is SwiftNIO's, so the Redis connections live on an event loop like everything else.
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
