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
 * Only what nvml-wrapper 0.13 needs for fleet is exported: the wrapper resolves every symbol at
 * load time but fails only when a missing one is called (nvmlShutdown is called when its handle
 * is dropped). Return codes and structures are NVML's (nvml.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
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

static struct nvmlDevice_st gpus[MAX_GPUS];
static unsigned int gpu_count;
static char driver_version[80] = "550.54.15";
static int initialized;

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

/* Reads the description; returns what nvmlInit_v2 answers. */
static nvmlReturn_t load_description(void) {
    const char *path = getenv("FLEET_NVML_STUB_FILE");
    FILE *file;
    char line[512];
    nvmlReturn_t result = NVML_SUCCESS;

    gpu_count = 0;
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
        } else if (strncmp(line, "gpu ", 4) == 0 && gpu_count < MAX_GPUS) {
            if (parse_gpu(line, &gpus[gpu_count]) != 0) {
                fprintf(stderr, "nvml stand-in: bad line in %s: %s\n", path, line);
                result = NVML_ERROR_UNKNOWN;
                break;
            }
            gpus[gpu_count].index = gpu_count;
            gpu_count++;
        }
    }
    fclose(file);
    return result;
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
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
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
    *temp = device->temperature;
    return NVML_SUCCESS;
}

/* NVML's two-step protocol: a count of 0 (or too small) asks how many there are. */
static nvmlReturn_t list_processes(unsigned int running, unsigned int *count,
                                   nvmlProcessInfo_t *infos) {
    unsigned int i;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < running) {
        *count = running;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (running > 0 && infos == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < running; i++) {
        infos[i].pid = 1000 + i;
        infos[i].usedGpuMemory = 1ull << 20;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = running;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = usable(device);
    return result != NVML_SUCCESS ? result : list_processes(device->processes, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = usable(device);
    return result != NVML_SUCCESS ? result : list_processes(0, count, infos);
}
