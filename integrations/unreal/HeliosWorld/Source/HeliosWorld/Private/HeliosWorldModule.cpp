// The HeliosWorld runtime module: no start-up work of its own (the component connects on demand).
#include "Modules/ModuleManager.h"

IMPLEMENT_MODULE(FDefaultModuleImpl, HeliosWorld)
