// Example instances of the four profiles: one CRS episode of grade 2 (shaped like
// tests/data/golden/crs-grade2-tocilizumab.out.json, shortened).

Instance: example-crs-day2
InstanceOf: CartToxicityGrade
Usage: #example
Title: "CRS grade 2 on day 2"
* meta.profile = Canonical(CartToxicityGrade)
* identifier.system = "https://cart-fhir.org/fhir/identifier/grade-assessment"
* identifier.value = "0f4e2a9b7c1d3e5f6a8b9c0d1e2f3a4b"
* status = #preliminary
* category[survey] = $obs-category#survey "Survey"
* code.coding[local] = CartToxicity#crs-grade-astct "CRS grade (ASTCT 2019)"
* code.text = "CRS grade (ASTCT 2019), day 2"
* subject = Reference(Patient/example)
* effectivePeriod.extension[0].url = $relative-datetime
* effectivePeriod.extension[0].extension[0].url = "target"
* effectivePeriod.extension[0].extension[0].valueReference = Reference(MedicationAdministration/example-infusion)
* effectivePeriod.extension[0].extension[1].url = "targetPath"
* effectivePeriod.extension[0].extension[1].valueString = "effective"
* effectivePeriod.extension[0].extension[2].url = "relationship"
* effectivePeriod.extension[0].extension[2].valueCode = #after-start
* effectivePeriod.extension[0].extension[3].url = "offset"
* effectivePeriod.extension[0].extension[3].valueDuration = 2 'd' "d"
* effectivePeriod.start = "2026-03-03T00:00:00+01:00"
* effectivePeriod.end = "2026-03-03T23:59:59+01:00"
* valueInteger = 2
* method = CartToxicity#automated-grading "Automated grading"
* method.text = "ASTCT 2019 (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638); cart-fhir 0.1.0, criteria table astct-crs-2019 v1"
* device = Reference(Device/example-engine)
* derivedFrom[0] = Reference(Observation/example-temperature)
* derivedFrom[+] = Reference(Observation/example-oxygen)
* component[0].code.coding[local] = CartToxicity#max-temperature "Highest body temperature of the day"
* component[0].valueQuantity = 39.1 'Cel' "°C"
* component[+].code.coding[local] = CartToxicity#fever "Fever (temperature >= 38.0 C)"
* component[=].valueBoolean = true
* component[+].code.coding[local] = CartToxicity#hypoxia "Oxygen support"
* component[=].valueCodeableConcept = CrsOxygenTier#low-flow

Instance: example-crs-episode
InstanceOf: CartToxicityEpisode
Usage: #example
Title: "CRS episode, maximum grade 2"
* meta.profile = Canonical(CartToxicityEpisode)
* identifier.system = "https://cart-fhir.org/fhir/identifier/toxicity-episode"
* identifier.value = "5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e"
* clinicalStatus = $cond-clinical#resolved "Resolved"
* verificationStatus = $cond-ver#provisional "Provisional"
* category[encounterDiagnosis] = $cond-category#encounter-diagnosis "Encounter Diagnosis"
* code.coding[0] = CartToxicity#crs "Cytokine release syndrome"
* code.coding[1] = $icd10cm#D89.832 "Cytokine release syndrome, grade 2"
* code.coding[2] = $ncit#C143394 "Cytokine release syndrome"
* code.text = "Cytokine release syndrome"
* subject = Reference(Patient/example)
* onsetDateTime = "2026-03-02T14:00:00+01:00"
* abatementDateTime = "2026-03-05T00:00:00+01:00"
* stage.summary.coding[0] = $ncit#C41339 "Grade 2 Moderate Adverse Event"
* stage.summary.coding[1] = ToxicityGrade#2 "Grade 2"
* stage.summary.text = "Grade 2"
* stage.assessment = Reference(example-crs-day2)
* stage.type.coding[local] = CartToxicity#crs-grade-astct "CRS grade (ASTCT 2019)"
* evidence.detail = Reference(example-crs-day2)

Instance: example-crs-adverse-event
InstanceOf: CartAdverseEvent
Usage: #example
Title: "Adverse event of the CRS episode"
* meta.profile = Canonical(CartAdverseEvent)
* extension[grade].valueCodeableConcept.coding[0] = $ncit#C41339 "Grade 2 Moderate Adverse Event"
* extension[grade].valueCodeableConcept.coding[1] = ToxicityGrade#2 "Grade 2"
* extension[grade].valueCodeableConcept.text = "Grade 2"
* identifier.system = "https://cart-fhir.org/fhir/identifier/adverse-event"
* identifier.value = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
* actuality = #actual
* event.coding[0] = CartToxicity#crs "Cytokine release syndrome"
* event.coding[1] = $icd10cm#D89.832 "Cytokine release syndrome, grade 2"
* event.coding[2] = $ncit#C143394 "Cytokine release syndrome"
* event.text = "Cytokine release syndrome"
* subject = Reference(Patient/example)
* date = "2026-03-02T14:00:00+01:00"
* recordedDate = "2026-03-10T09:00:00+00:00"
* resultingCondition = Reference(example-crs-episode)
* severity = $ae-severity#moderate "Moderate"
* seriousness = $ae-seriousness#non-serious "Non-serious"
* outcome = $ae-outcome#resolved "Resolved"
* contributor = Reference(Device/example-engine)
* suspectEntity.instance = Reference(MedicationAdministration/example-infusion)
* suspectEntity.causality.assessment = $ae-causality-assess#Probably-Likely "Probably/Likely"
* suspectEntity.causality.productRelatedness = "crs-within-window"
* suspectEntity.causality.method = $ae-causality-method#ProbabilityScale "Probability Scale"

Instance: example-grading-run
InstanceOf: CartGradingProvenance
Usage: #example
Title: "Grading run of the example patient"
* meta.profile = Canonical(CartGradingProvenance)
* meta.tag[run].system = "https://cart-fhir.org/fhir/identifier/grading-run"
* meta.tag[run].code = #99dba7c34fdfe64191a4fd48e37299e0
* target[0] = Reference(example-crs-day2)
* target[+] = Reference(example-crs-episode)
* target[+] = Reference(example-crs-adverse-event)
* recorded = "2026-03-10T09:00:00+00:00"
* activity = $v3-DataOperation#CREATE "create"
* agent.type = $prov-participant#assembler "Assembler"
* agent.who = Reference(Device/example-engine)
* entity.role = #source
* entity.what = Reference(Observation/example-temperature)
