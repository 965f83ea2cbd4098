// Umbrella header of the pac-concurrency library.
#ifndef PAC_CONCURRENCY_CONCURRENCY_H_
#define PAC_CONCURRENCY_CONCURRENCY_H_

#include "pac/concurrency/clock.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/context.h"
#include "pac/concurrency/driver.h"
#include "pac/concurrency/manager.h"
#include "pac/concurrency/queue_manager.h"
#include "pac/concurrency/repository.h"
#include "pac/concurrency/status.h"

#endif  // PAC_CONCURRENCY_CONCURRENCY_H_
