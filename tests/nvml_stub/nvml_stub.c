/*
 * A stand-in for NVIDIA's management library (libnvidia-ml.so.1), for fleet's tests on machines
 * without an NVIDIA GPU. fleet loads it through nvml-wrapper like the real library
 * (FLEET_NVML_LIBRARY points at it) and it answers from a description file that the test writes;
 * the file's path is in FLEET_NVML_STUB_FILE. The file is read again at every nvmlInit_v2, so a
 * test can change the machine between two runs of fleet (or two reconciles of `fleet watch`).
 *
 * The description, one item per line ('#' starts a comment):
 *
 *   init ok | driver_not_loaded | no_permission | unknown
 *   driver 550.54.15
 *   gpu UUID MEMORY_TOTAL_BYTES MEMORY_USED_BYTES UTILIZATION_PERCENT TEMPERATURE_C PROCESSES STATE NAME...
 *
 * STATE is `ok` or `lost`: every call about a lost GPU, its handle included, answers
 * NVML_ERROR_GPU_IS_LOST, as the real library does for a GPU that fell off the bus.
 *
 * Health, by UUID (a GPU without these lines is healthy: no ECC errors, nothing pending, no
 * throttling):
 *
 *   health UUID KEY=VALUE...      ecc_uncorrected=N ecc_corrected=N retired_pending=0|1
 *                                 remapped_pending=0|1 remapped_failure=0|1 throttle=BITS (hex)
 *                                 fail=memory|ecc|retired|fields|throttle|processes|temperature
 *                                 (that call answers NVML_ERROR_UNKNOWN: a driver answering garbage)
 *   process UUID PID USED_BYTES   a compute process; a GPU with such lines lists them instead of
 *                                 the PROCESSES count of its gpu line
 *   event SERIAL UUID xid|dbe|sbe [XID]
 *                                 an event for the event set's wait: delivered once per process
 *                                 (by SERIAL, 1..1023) to a set the GPU registered with
 *
 * While initialized, the description is read again at every nvmlDeviceGetCount_v2 and, when the
 * file changed, during an event wait (which may run on a thread of its own), so that a process that keeps NVML open (`fleet watch`) sees the test change the machine;
 * an `init` other than ok then answers that error (the driver went away).
 *
 * Only what nvml-wrapper 0.13 needs for fleet is exported: the wrapper resolves every symbol at
 * load time but fails only when a missing one is called (nvmlShutdown is called when its handle
 * is dropped). Return codes and structures are NVML's (nvml.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/stat.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_TEMPERATURE_GPU = 0 };

#define MAX_GPUS 64
#define UUID_SIZE 96
#define NAME_SIZE 96

struct nvmlDevice_st {
    unsigned int index;
    char uuid[UUID_SIZE];
    char name[NAME_SIZE];
    unsigned long long memory_total;
    unsigned long long memory_used;
    unsigned int utilization;
    unsigned int temperature;
    unsigned int processes;
    int lost;
    unsigned long long ecc_uncorrected;
    unsigned long long ecc_corrected;
    unsigned int retired_pending;
    unsigned int remapped_pending;
    unsigned int remapped_failure;
    unsigned long long throttle;
    char fail[32];
    unsigned int listed;           /* process lines */
    unsigned int pids[16];
    unsigned long long used[16];
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    unsigned long long value;
} nvmlFieldValue_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

enum {
    EVENT_SBE = 1,
    EVENT_DBE = 2,
    EVENT_XID = 8,
    FI_REMAPPED_PENDING = 144,
    FI_REMAPPED_FAILURE = 145,
    VALUE_UNSIGNED_INT = 1,
    MAX_EVENTS = 64,
    MAX_SERIAL = 1024,
    MAX_SETS = 16,
};

struct pending_event {
    unsigned int serial;
    char uuid[UUID_SIZE];
    unsigned long long type;
    unsigned long long data;
};

/* An event set: the GPUs (by UUID, so that a description read again keeps them) and types. */
struct nvmlEventSet_st {
    int used;
    unsigned int count;
    char uuids[MAX_GPUS][UUID_SIZE];
    unsigned long long types[MAX_GPUS];
};
typedef struct nvmlEventSet_st *nvmlEventSet_t;

static struct nvmlDevice_st gpus[MAX_GPUS];
static unsigned int gpu_count;
static char driver_version[80] = "550.54.15";
static int initialized;
static nvmlReturn_t init_result;
static struct pending_event events[MAX_EVENTS];
static unsigned int event_count;
/* The description as last parsed, published to the arrays above under `lock`: the event wait
 * (on its own thread) and the other calls may run at once. */
static struct nvmlDevice_st staged_gpus[MAX_GPUS];
static unsigned int staged_gpu_count;
static struct pending_event staged_events[MAX_EVENTS];
static unsigned int staged_event_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct timespec loaded_mtime;
static off_t loaded_size = -1;
static unsigned char delivered[MAX_SERIAL];
static struct nvmlEventSet_st sets[MAX_SETS];

static nvmlReturn_t init_code(const char *word) {
    if (strcmp(word, "ok") == 0) return NVML_SUCCESS;
    if (strcmp(word, "driver_not_loaded") == 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (strcmp(word, "no_permission") == 0) return NVML_ERROR_NO_PERMISSION;
    return NVML_ERROR_UNKNOWN;
}

static void trim_newline(char *s) {
    s[strcspn(s, "\r\n")] = '\0';
}

static int parse_gpu(const char *line, struct nvmlDevice_st *gpu) {
    char state[16];
    int name_at = 0;
    memset(gpu, 0, sizeof *gpu);
    if (sscanf(line, "gpu %95s %llu %llu %u %u %u %15s %n", gpu->uuid, &gpu->memory_total,
               &gpu->memory_used, &gpu->utilization, &gpu->temperature, &gpu->processes, state,
               &name_at) < 7 || name_at == 0) {
        return -1;
    }
    snprintf(gpu->name, NAME_SIZE, "%s", line + name_at);
    gpu->lost = strcmp(state, "lost") == 0;
    return 0;
}

static struct nvmlDevice_st *find_gpu(struct nvmlDevice_st *list, unsigned int count,
                                      const char *uuid) {
    unsigned int i;
    for (i = 0; i < count; i++) {
        if (strcmp(list[i].uuid, uuid) == 0) return &list[i];
    }
    return NULL;
}

/* `health UUID KEY=VALUE...`; -1 for an unknown GPU or key. */
static int parse_health(char *line) {
    char *token = strtok(line + 7, " ");
    struct nvmlDevice_st *gpu = token ? find_gpu(staged_gpus, staged_gpu_count, token) : NULL;
    if (gpu == NULL) return -1;
    while ((token = strtok(NULL, " ")) != NULL) {
        char *value = strchr(token, '=');
        if (value == NULL) return -1;
        *value++ = '\0';
        if (strcmp(token, "ecc_uncorrected") == 0) gpu->ecc_uncorrected = strtoull(value, NULL, 10);
        else if (strcmp(token, "ecc_corrected") == 0) gpu->ecc_corrected = strtoull(value, NULL, 10);
        else if (strcmp(token, "retired_pending") == 0) gpu->retired_pending = atoi(value);
        else if (strcmp(token, "remapped_pending") == 0) gpu->remapped_pending = atoi(value);
        else if (strcmp(token, "remapped_failure") == 0) gpu->remapped_failure = atoi(value);
        else if (strcmp(token, "throttle") == 0) gpu->throttle = strtoull(value, NULL, 16);
        else if (strcmp(token, "fail") == 0) snprintf(gpu->fail, sizeof gpu->fail, "%s", value);
        else return -1;
    }
    return 0;
}

static int parse_process(const char *line) {
    char uuid[UUID_SIZE];
    unsigned int pid;
    unsigned long long used;
    struct nvmlDevice_st *gpu;
    if (sscanf(line, "process %95s %u %llu", uuid, &pid, &used) != 3) return -1;
    gpu = find_gpu(staged_gpus, staged_gpu_count, uuid);
    if (gpu == NULL || gpu->listed >= 16) return -1;
    gpu->pids[gpu->listed] = pid;
    gpu->used[gpu->listed] = used;
    gpu->listed++;
    return 0;
}

static int parse_event(const char *line) {
    char type[8];
    struct pending_event *e = &staged_events[staged_event_count];
    int fields;
    if (staged_event_count >= MAX_EVENTS) return -1;
    e->data = 0;
    fields = sscanf(line, "event %u %95s %7s %llu", &e->serial, e->uuid, type, &e->data);
    if (fields < 3 || e->serial == 0 || e->serial >= MAX_SERIAL) return -1;
    if (strcmp(type, "xid") == 0 && fields == 4) e->type = EVENT_XID;
    else if (strcmp(type, "dbe") == 0) e->type = EVENT_DBE;
    else if (strcmp(type, "sbe") == 0) e->type = EVENT_SBE;
    else return -1;
    staged_event_count++;
    return 0;
}

/* Whether a call named `what` is made to fail on this GPU. */
static int fails(nvmlDevice_t device, const char *what) {
    return strcmp(device->fail, what) == 0;
}

/* Parses the description into the staged arrays; returns what nvmlInit_v2 answers. */
static nvmlReturn_t parse_description(void) {
    const char *path = getenv("FLEET_NVML_STUB_FILE");
    FILE *file;
    char line[512];
    nvmlReturn_t result = NVML_SUCCESS;

    staged_gpu_count = 0;
    staged_event_count = 0;
    if (path == NULL || (file = fopen(path, "r")) == NULL) {
        fprintf(stderr, "nvml stand-in: cannot read FLEET_NVML_STUB_FILE (%s)\n",
                path ? path : "unset");
        return NVML_ERROR_UNKNOWN;
    }
    while (fgets(line, sizeof line, file) != NULL) {
        char word[64];
        trim_newline(line);
        if (line[0] == '#' || line[0] == '\0') continue;
        if (sscanf(line, "init %63s", word) == 1) {
            result = init_code(word);
        } else if (sscanf(line, "driver %79s", driver_version) == 1) {
            continue;
        } else if (strncmp(line, "gpu ", 4) == 0 && staged_gpu_count < MAX_GPUS) {
            if (parse_gpu(line, &staged_gpus[staged_gpu_count]) != 0) {
                fprintf(stderr, "nvml stand-in: bad line in %s: %s\n", path, line);
                result = NVML_ERROR_UNKNOWN;
                break;
            }
            staged_gpus[staged_gpu_count].index = staged_gpu_count;
            staged_gpu_count++;
        } else {
            int bad = 0;
            if (strncmp(line, "health ", 7) == 0) bad = parse_health(line);
            else if (strncmp(line, "process ", 8) == 0) bad = parse_process(line);
            else if (strncmp(line, "event ", 6) == 0) bad = parse_event(line);
            if (bad != 0) {
                fprintf(stderr, "nvml stand-in: bad line in %s: %s\n", path, line);
                result = NVML_ERROR_UNKNOWN;
                break;
            }
        }
    }
    fclose(file);
    return result;
}

/* Reads the description and publishes it (under `lock`); returns what nvmlInit_v2 answers. */
static nvmlReturn_t load_description(void) {
    const char *path = getenv("FLEET_NVML_STUB_FILE");
    struct stat seen;
    nvmlReturn_t result;
    pthread_mutex_lock(&lock);
    if (path != NULL && stat(path, &seen) == 0) {
        loaded_mtime = seen.st_mtim;
        loaded_size = seen.st_size;
    }
    result = parse_description();
    memcpy(gpus, staged_gpus, sizeof gpus);
    gpu_count = staged_gpu_count;
    memcpy(events, staged_events, sizeof events);
    event_count = staged_event_count;
    init_result = result;
    pthread_mutex_unlock(&lock);
    return result;
}

/* The description again only when the file changed since the last read (the event wait looks
 * every 20 ms: a stat costs next to nothing). */
static nvmlReturn_t reload_if_changed(void) {
    const char *path = getenv("FLEET_NVML_STUB_FILE");
    struct stat seen;
    if (path != NULL && stat(path, &seen) == 0 && seen.st_size == loaded_size &&
        seen.st_mtim.tv_sec == loaded_mtime.tv_sec &&
        seen.st_mtim.tv_nsec == loaded_mtime.tv_nsec) {
        return init_result;
    }
    return load_description();
}

/* The checks every device call starts with. */
static nvmlReturn_t usable(nvmlDevice_t device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || device < gpus || device >= gpus + gpu_count) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    return device->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *value) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    nvmlReturn_t result = load_description();
    if (result == NVML_SUCCESS) initialized++;
    return result;
}

/* While initialized: the description again; what it says of the driver now. */
static nvmlReturn_t reload(void) {
    return load_description();
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, driver_version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t result;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if ((result = reload()) != NVML_SUCCESS) return result;
    *count = gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpus[index].lost) return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t result = usable(device);
    return result != NVML_SUCCESS ? result : copy_string(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    nvmlReturn_t result = usable(device);
    return result != NVML_SUCCESS ? result : copy_string(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "memory")) return NVML_ERROR_UNKNOWN;
    /* NVML_STRUCT_VERSION(Memory, 2): the struct's size, version 2 in the top byte. */
    if (memory->version != (unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24))) {
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    memory->total = device->memory_total;
    memory->used = device->memory_used;
    memory->reserved = 0;
    memory->free = device->memory_total > device->memory_used
                       ? device->memory_total - device->memory_used
                       : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (rates == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    rates->gpu = device->utilization;
    rates->memory = device->utilization;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (temp == NULL || sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "temperature")) return NVML_ERROR_UNKNOWN;
    *temp = device->temperature;
    return NVML_SUCCESS;
}

/* NVML's two-step protocol: a count of 0 (or too small) asks how many there are. */
static nvmlReturn_t list_processes(nvmlDevice_t device, unsigned int running,
                                   unsigned int *count, nvmlProcessInfo_t *infos) {
    unsigned int i;
    if (device != NULL && device->listed > 0) running = device->listed;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < running) {
        *count = running;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (running > 0 && infos == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < running; i++) {
        int own = device != NULL && device->listed > 0;
        infos[i].pid = own ? device->pids[i] : 1000 + i;
        infos[i].usedGpuMemory = own ? device->used[i] : 1ull << 20;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = running;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = usable(device);
    if (result == NVML_SUCCESS && fails(device, "processes")) return NVML_ERROR_UNKNOWN;
    return result != NVML_SUCCESS ? result
                                  : list_processes(device, device->processes, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = usable(device);
    return result != NVML_SUCCESS ? result : list_processes(NULL, 0, count, infos);
}

/* Health: ECC counters (memory error type 0 corrected, 1 uncorrected; counter 0 volatile). */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter,
                                         unsigned long long *count) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (count == NULL || counter < 0 || counter > 1) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "ecc")) return NVML_ERROR_UNKNOWN;
    *count = error_type == 1 ? device->ecc_uncorrected : device->ecc_corrected;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, int *pending) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "retired")) return NVML_ERROR_UNKNOWN;
    *pending = device->retired_pending ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *reasons) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (reasons == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "throttle")) return NVML_ERROR_UNKNOWN;
    *reasons = device->throttle;
    return NVML_SUCCESS;
}

/* Field values: the remapped-row fields; any other field is not supported, per value. */
nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count, nvmlFieldValue_t *values) {
    nvmlReturn_t result = usable(device);
    int i;
    if (result != NVML_SUCCESS) return result;
    if (values == NULL || count <= 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (fails(device, "fields")) return NVML_ERROR_UNKNOWN;
    for (i = 0; i < count; i++) {
        values[i].valueType = VALUE_UNSIGNED_INT;
        values[i].nvmlReturn = NVML_SUCCESS;
        values[i].timestamp = (long long)time(NULL) * 1000000;
        if (values[i].fieldId == FI_REMAPPED_PENDING) values[i].value = device->remapped_pending;
        else if (values[i].fieldId == FI_REMAPPED_FAILURE) values[i].value = device->remapped_failure;
        else values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (types == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *types = EVENT_SBE | EVENT_DBE | EVENT_XID;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    int i;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < MAX_SETS; i++) {
        if (!sets[i].used) {
            memset(&sets[i], 0, sizeof sets[i]);
            sets[i].used = 1;
            *set = &sets[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (set == NULL || set < sets || set >= sets + MAX_SETS) return NVML_ERROR_INVALID_ARGUMENT;
    set->used = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    nvmlReturn_t result = usable(device);
    if (result != NVML_SUCCESS) return result;
    if (set == NULL || set < sets || set >= sets + MAX_SETS || !set->used ||
        set->count >= MAX_GPUS) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    snprintf(set->uuids[set->count], UUID_SIZE, "%s", device->uuid);
    set->types[set->count] = types;
    set->count++;
    return NVML_SUCCESS;
}

/* The first undelivered event for a GPU and type the set registered, if any. */
static int next_event_locked(nvmlEventSet_t set, nvmlEventData_t *data) {
    unsigned int e, g;
    for (e = 0; e < event_count; e++) {
        struct pending_event *event = &events[e];
        if (delivered[event->serial]) continue;
        for (g = 0; g < set->count; g++) {
            struct nvmlDevice_st *gpu;
            if (strcmp(set->uuids[g], event->uuid) != 0 || !(set->types[g] & event->type)) {
                continue;
            }
            gpu = find_gpu(gpus, gpu_count, event->uuid);
            if (gpu == NULL) continue;
            delivered[event->serial] = 1;
            data->device = gpu;
            data->eventType = event->type;
            data->eventData = event->data;
            data->gpuInstanceId = 0xFFFFFFFFu;
            data->computeInstanceId = 0xFFFFFFFFu;
            return 1;
        }
    }
    return 0;
}

static int next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    int found;
    pthread_mutex_lock(&lock);
    found = next_event_locked(set, data);
    pthread_mutex_unlock(&lock);
    return found;
}

/* Waits up to `timeout_ms` for an event, looking at the description every 20 ms meanwhile
 * (read again only when it changed). */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeout_ms) {
    unsigned int waited = 0;
    struct timespec step = {0, 20 * 1000 * 1000};
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (set == NULL || data == NULL || set < sets || set >= sets + MAX_SETS || !set->used) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (;;) {
        nvmlReturn_t result = reload_if_changed();
        if (result != NVML_SUCCESS) return result;
        if (next_event(set, data)) return NVML_SUCCESS;
        if (waited >= timeout_ms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
        waited += 20;
    }
}
